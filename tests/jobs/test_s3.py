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


def _bucket(endpoint, name):
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)


def test_an_interrupted_upload_leaves_nothing_under_the_final_name(s3_server, monkeypatch):
    """The upload dies after its first block (a network error, a killed process): no truncated object
    may appear under the final key, and the temporary key is cleaned up."""
    import tempfile

    from microturn import storage

    _bucket(s3_server, "uploads")
    real = tempfile.TemporaryFile

    class FlakyStaged:
        def __init__(self):
            self.fh, self.reads = real(), 0

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def read(self, n=-1):
            self.reads += 1
            if self.reads > 1:
                raise OSError("connection reset during upload")
            return self.fh.read(n)

    monkeypatch.setattr(tempfile, "TemporaryFile", FlakyStaged)
    with pytest.raises(OSError, match="connection reset"):
        with storage.atomic_writer("s3://uploads/corpus/shard-000000.tar") as fh:
            fh.write(b"x" * (5 << 20))  # more than one upload block
    assert storage.listdir("s3://uploads/corpus") == []
    monkeypatch.setattr(tempfile, "TemporaryFile", real)
    storage.write_bytes_atomic("s3://uploads/corpus/ok.json", b"{}")
    assert storage.listdir("s3://uploads/corpus") == ["ok.json"] and storage.read_bytes("s3://uploads/corpus/ok.json") == b"{}"


def test_the_output_lock_on_an_object_store_is_a_conditional_create(s3_server):
    from microturn import storage
    from microturn.jobs.lock import OutputLocked, output_lock

    _bucket(s3_server, "locks")
    with output_lock("s3://locks/corpus") as uri:
        with pytest.raises(OutputLocked, match="locks/corpus/_work/build.lock"):
            with output_lock("s3://locks/corpus"):
                pass
        assert storage.exists(uri)
    assert not storage.exists(uri), "released at the end of the build"


def test_quarantine_rows_name_the_manifest_uri_not_the_local_copy(s3_server, build_cfg, tmp_path):
    """A remote source is fetched into a temporary folder to be decoded; its errors must still name the
    s3:// URI (and so stay identical across runs)."""
    import boto3

    from microturn.manifest import SessionSpec
    from microturn.pipeline.session import process_session
    from microturn.records import StageError

    _bucket(s3_server, "raw")
    boto3.client("s3", endpoint_url=s3_server).put_object(Bucket="raw", Key="text.mp4", Body=b"not a video\n" * 50)
    spec = SessionSpec.model_validate({"session_id": "bad", "audio": [{"uri": "s3://raw/text.mp4", "speaker": "A"}]})
    with pytest.raises(StageError) as err:
        process_session(spec, build_cfg, _NeverTokenizes())
    assert err.value.source == "s3://raw/text.mp4"
    assert tempfile_prefix() not in err.value.message


def tempfile_prefix():
    import tempfile

    return tempfile.gettempdir() + "/microturn-"


class _NeverTokenizes:
    """The session fails in decode, before any tokenizer is needed."""

    text_pad_id = 0

    def tokenize(self, aligned):
        raise AssertionError("a bad input reached tokenization")

    def describe(self):
        return {}
