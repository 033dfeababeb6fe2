"""Inputs from and outputs to an S3-compatible object store (moto's server on 127.0.0.1)."""

import hashlib
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

    # Re-running the same build resumes over the committed shards (their sizes are read back from the
    # store) and changes nothing.
    before = {n: storage.read_bytes(f"{out}/shards/{n}") for n in names}
    again = run_build("s3://corpus/raw/sessions.jsonl", out, build_cfg, progress=False)
    assert again.resumed_sessions == 3 and again.sessions_ok == 3 and again.shards == summary.shards
    assert {n: storage.read_bytes(f"{out}/shards/{n}") for n in storage.listdir(out + "/shards")} == before


def test_committed_shards_on_s3_are_found_again_by_size(s3_server):
    """Resume asks the store for the size of every committed shard (pyarrow: get_file_info)."""
    from microturn.config import ShardConfig
    from microturn.pipeline.shard import ShardSink

    _bucket(s3_server, "bkt")
    with ShardSink("s3://bkt/c", ShardConfig(target_bytes=1)) as sink:
        sink.add_session([_sample("s1")])
    resumed = ShardSink.resume("s3://bkt/c", ShardConfig(target_bytes=1))
    assert [i.name for i in resumed.committed] == ["shard-000000.tar"] and resumed.sessions_committed == {"s1"}


def _sample(sid):
    from microturn.records import Sample

    return Sample(key=f"{sid}-0", members={"meta.json": b"{}"}, index_row={"session_id": sid, "key": f"{sid}-0"})


def test_size_and_folder_checks_work_on_s3(s3_server):
    """storage answers size, is-a-folder and sha256 for every URI (report/corpus.py used fsspec-only calls)."""
    from microturn import storage

    _bucket(s3_server, "sizes")
    storage.write_bytes_atomic("s3://sizes/c/shards/a.tar", b"x" * 1234)
    assert storage.size("s3://sizes/c/shards/a.tar") == 1234
    assert storage.size("s3://sizes/c/shards/missing.tar") is None
    assert storage.is_dir("s3://sizes/c/shards") and not storage.is_dir("s3://sizes/c/shards/a.tar")
    assert storage.file_sha256_and_size("s3://sizes/c/shards/a.tar") == (hashlib.sha256(b"x" * 1234).hexdigest(), 1234)
    assert storage.stat("s3://sizes/nothing") is None


def test_the_budget_of_an_s3_session_comes_from_its_duration(s3_server, tmp_path):
    import boto3
    import numpy as np

    from microturn.config import load_config
    from microturn.jobs.budget import session_budget
    from microturn.manifest import SessionSpec
    from tests.media_helpers import write_wav

    _bucket(s3_server, "media")
    wav = write_wav(tmp_path / "a.wav", np.zeros(16000 * 90, dtype=np.float32), 16000)
    boto3.client("s3", endpoint_url=s3_server).upload_file(str(wav), "media", "a.wav")
    cfg = load_config(None, ["job.session_timeout_base_s=100", "job.session_timeout_per_media_min_s=10"])
    budget = session_budget(SessionSpec.model_validate({"session_id": "s", "audio": [{"uri": "s3://media/a.wav"}]}), cfg)
    assert budget.media_s == 90.0 and budget.seconds == 115.0


def test_probe_opens_s3_inputs_and_names_missing_and_empty_ones(s3_server):
    import boto3

    from microturn.pipeline.probe import probe_media
    from microturn.records import StageError

    _bucket(s3_server, "probe")
    boto3.client("s3", endpoint_url=s3_server).put_object(Bucket="probe", Key="empty.wav", Body=b"")
    for key, reason in (("missing.wav", "not_found"), ("empty.wav", "empty_file")):
        with pytest.raises(StageError) as err:
            probe_media(f"s3://probe/{key}")
        assert err.value.reason == reason and err.value.source == f"s3://probe/{key}"


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


def test_the_lock_holds_on_a_store_that_ignores_conditional_writes(s3_server, monkeypatch):
    """Older MinIO/Ceph ignore If-None-Match: a second build's PUT would overwrite the holder's lock and
    then read back its own token. It must be refused, and the holder's lock left as it was."""
    import boto3

    from microturn import storage
    from microturn.jobs.lock import OutputLocked, output_lock

    _bucket(s3_server, "oldstore")
    real_client = boto3.client

    class IgnoresIfNoneMatch:
        def __init__(self, client):
            self._client = client

        def __getattr__(self, name):
            return getattr(self._client, name)

        def put_object(self, **kwargs):
            kwargs.pop("IfNoneMatch", None)
            return self._client.put_object(**kwargs)

    monkeypatch.setattr(boto3, "client", lambda *a, **k: IgnoresIfNoneMatch(real_client(*a, **k)))
    with output_lock("s3://oldstore/corpus") as uri:
        held = storage.read_bytes(uri)
        with pytest.raises(OutputLocked, match="oldstore/corpus/_work/build.lock"):
            with output_lock("s3://oldstore/corpus"):
                pass
        assert storage.read_bytes(uri) == held, "the holder's lock was overwritten"
    assert not storage.exists(uri)


_HOLD_S3 = ("import sys, time\nfrom microturn.jobs.lock import exit_on_sigterm, output_lock\nexit_on_sigterm()\n"
            "with output_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(600)\n")


def test_sigterm_releases_the_object_store_lock(s3_server):
    """`ray job stop` sends SIGTERM: the build command unwinds and deletes its lock object."""
    import signal

    from microturn import storage
    from microturn.jobs.lock import lock_uri
    from tests.jobs.util import REPO

    _bucket(s3_server, "stopped")
    out = "s3://stopped/corpus"
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_S3, out], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert storage.exists(lock_uri(out))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not storage.exists(lock_uri(out)), "a build stopped with SIGTERM left its lock behind"


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
        process_session(spec, build_cfg, _NeverTokenizes(), write=list)
    assert err.value.source == "s3://raw/text.mp4"
    assert tempfile_prefix() not in err.value.message


def tempfile_prefix():
    import tempfile

    return tempfile.gettempdir() + "/microturn-"


class _NeverTokenizes:
    """The session fails in decode, before any tokenizer is needed."""

    def tokenize(self, inp):
        raise AssertionError("a bad input reached tokenization")

    def describe(self):
        return {}

    def members(self):
        return []
