from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every committed file of a corpus (not the resume state, not the timing stats) by relative path."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not rel.startswith("_work/") and rel != "stats.json":
            out[rel] = p.read_bytes()
    return out
