import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every data file of a corpus by relative path: shards and their markers, index, quarantine and
    dataset.json. Left out: the resume state (_work/), stats.json (wall times) and config.yaml (it records
    job settings such as num_cpus, which never change the data; dataset.json's config hash excludes them)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not rel.startswith("_work/") and rel not in ("stats.json", "config.yaml"):
            out[rel] = p.read_bytes()
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
