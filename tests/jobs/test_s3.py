"""Inputs from and outputs to an S3-compatible object store (moto's server on 127.0.0.1)."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.jobs.util import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def s3_server(monkeypatch):
    port = free_port()
    server = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    try:
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_build_reads_media_from_and_writes_shards_to_s3(s3_server, small_corpus_media, build_cfg, tmp_path):
    import boto3

    from microturn import storage
    from microturn.jobs.build import run_build
    from microturn.validate import validate_dataset

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="corpus")
    media = Path(small_corpus_media).parent
    for p in sorted(media.rglob("*")):
        if p.is_file():
            s3.upload_file(str(p), "corpus", f"raw/{p.relative_to(media).as_posix()}")

    out = "s3://corpus/built"
    summary = run_build("s3://corpus/raw/sessions.jsonl", out, build_cfg, progress=False)
    assert summary.sessions_ok == 3 and summary.quarantined == 0

    names = storage.listdir(out + "/shards")
    assert any(n.endswith(".tar") for n in names)
    assert not any(".tmp" in n for n in names)
    report = validate_dataset(out, deep=True)
    assert report.ok, report.problems
