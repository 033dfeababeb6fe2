"""Open what the user points at: a corpus folder, one shard, or a list of shard URLs.

Accepted targets (local paths, ``file://`` or any URI microturn.storage reads):

* a corpus folder (holds ``dataset.json``; its shards, checksums, index and config come from there);
* one shard ``.tar``;
* a list of shards: a text file with one URI per line (``#`` comments; relative entries resolve against
  the file's folder), or a brace pattern such as ``corpus/shards/shard-{000000..000003}.tar``.

Samples are read straight from the tars (streamed, one sample's members in memory at a time) and decoded
by ``microturn.format`` (the one module that owns the sample format).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Iterator, Literal, Optional

from microturn import storage
from microturn.format import MEMBERS, MemberTable
from microturn.report import UserError
from microturn.report.sample import SampleView, view_from_decoded

TargetKind = Literal["dataset", "shard", "list"]
LIST_SUFFIXES = (".txt", ".list", ".urls", ".shards")


@dataclass(frozen=True)
class ShardRef:
    """One shard to read, with what dataset.json says about it (None when read without a corpus)."""

    uri: str
    name: str
    sha256: Optional[str] = None
    bytes: Optional[int] = None
    samples: Optional[int] = None


@dataclass(frozen=True)
class Target:
    kind: TargetKind
    uri: str  # what the user gave, normalised
    shards: tuple[ShardRef, ...]
    dataset_uri: Optional[str] = None  # the corpus folder, when known (index, config, stats live there)
    dataset: Optional[dict[str, Any]] = None  # dataset.json

    def shard(self, name: str) -> Optional[ShardRef]:
        return next((s for s in self.shards if s.name == name or s.uri == name), None)

    @property
    def layout(self) -> "Layout":
        """How its samples decode: the member table and dimension sizes dataset.json declares (the
        default table when read without a corpus)."""
        from microturn.format import FormatError, known_dims_of_dataset, member_table_of_dataset

        if self.dataset is None:
            return Layout()
        try:
            return Layout(member_table_of_dataset(self.dataset), known_dims_of_dataset(self.dataset))
        except FormatError as exc:
            raise UserError(f"{self.dataset_uri}: {exc.message} (run `microturn validate`)") from None


@dataclass(frozen=True)
class Layout:
    """The member table samples are decoded with, and the symbol sizes (``{"K": 8, "M": 80}``) checked."""

    table: MemberTable = MEMBERS
    known: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------- opening targets


def _basename(uri: str) -> str:
    return PurePosixPath(uri.removeprefix("file://").rstrip("/")).name


def _parent(uri: str) -> str:
    if storage.is_remote(uri):
        return uri.rstrip("/").rsplit("/", 1)[0]
    return str(storage.local_path(uri).resolve().parent)


def _shard_entry_uri(dataset_uri: str, entry: dict[str, Any]) -> str:
    """dataset.json lists shards by path relative to the corpus folder (or by name under shards/)."""
    rel = entry.get("path") or entry.get("uri") or entry.get("name")
    if rel is None:
        raise UserError(f"dataset.json in {dataset_uri} lists a shard without a name or path")
    rel = str(rel)
    if "://" in rel or rel.startswith("/"):
        return rel
    if "/" not in rel:
        rel = f"shards/{rel}"
    return storage.join(dataset_uri, *rel.split("/"))


def read_dataset_json(dataset_uri: str) -> dict[str, Any]:
    from microturn.format import FormatError
    from microturn.format import read_dataset_json as format_read_dataset_json

    try:
        return format_read_dataset_json(dataset_uri)
    except FormatError as exc:
        raise UserError(f"{dataset_uri}: {exc.message}") from None


def open_dataset(dataset_uri: str) -> Target:
    meta = read_dataset_json(dataset_uri)
    refs = []
    for entry in meta.get("shards") or []:
        if isinstance(entry, str):
            entry = {"name": entry}
        uri = _shard_entry_uri(dataset_uri, entry)
        refs.append(
            ShardRef(
                uri=uri,
                name=_basename(uri),
                sha256=entry.get("sha256"),
                bytes=entry.get("bytes"),
                samples=entry.get("samples"),
            )
        )
    return Target("dataset", dataset_uri, tuple(refs), dataset_uri=dataset_uri, dataset=meta)


def _corpus_of_shard(shard_uri: str) -> Optional[str]:
    """The corpus folder a shard sits in (``<corpus>/shards/<name>.tar``), when it has a dataset.json."""
    folder = _parent(shard_uri)
    if _basename(folder) != "shards":
        return None
    corpus = _parent(folder)
    return corpus if storage.exists(storage.join(corpus, "dataset.json")) else None


def _refs_with_corpus_facts(uris: list[str]) -> tuple[tuple[ShardRef, ...], Optional[str], Optional[dict[str, Any]]]:
    """ShardRefs for bare shard URIs, with checksums from their corpus' dataset.json when they have one."""
    corpora = {c for c in (_corpus_of_shard(u) for u in uris) if c is not None}
    corpus = corpora.pop() if len(corpora) == 1 else None
    known: dict[str, ShardRef] = {}
    meta = None
    if corpus is not None:
        target = open_dataset(corpus)
        meta = target.dataset
        known = {s.name: s for s in target.shards}
    refs = []
    for u in uris:
        k = known.get(_basename(u))
        refs.append(ShardRef(u, _basename(u), k.sha256 if k else None, k.bytes if k else None, k.samples if k else None))
    return tuple(refs), corpus, meta


def _list_entries(list_uri: str) -> list[str]:
    base = _parent(list_uri)
    text = storage.read_bytes(list_uri).decode("utf-8", errors="replace")
    uris = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "://" in line or line.startswith("/"):
            uris.append(line)
        else:
            uris.append(storage.join(base, *line.split("/")))
    return uris


def open_target(path: str) -> Target:
    """Resolve a user-given path or URI; raises ``UserError`` with one clear line when it cannot."""
    path = str(path).strip()
    if not path:
        raise UserError("empty path")
    if "{" in path and ".." in path:
        import braceexpand

        uris = list(braceexpand.braceexpand(path))
        missing = [u for u in uris if not storage.exists(u)]
        if missing:
            raise UserError(f"{len(missing)} shard(s) of the pattern do not exist, first: {missing[0]}")
        refs, corpus, meta = _refs_with_corpus_facts(uris)
        return Target("list", path, refs, dataset_uri=corpus, dataset=meta)
    if not storage.exists(path):
        raise UserError(f"no such file or folder: {path}")
    if storage.is_dir(path):
        if storage.exists(storage.join(path, "dataset.json")):
            return open_dataset(path)
        raise UserError(f"{path} is a folder without dataset.json (not a built corpus; is the build finished?)")
    if path.endswith(".tar"):
        refs, corpus, meta = _refs_with_corpus_facts([path])
        return Target("shard", path, refs, dataset_uri=corpus, dataset=meta)
    if path.endswith(LIST_SUFFIXES) or not path.endswith((".tar.gz", ".tgz", ".parquet", ".json")):
        uris = _list_entries(path)
        if not uris:
            raise UserError(f"{path} lists no shards")
        missing = [u for u in uris if not storage.exists(u)]
        if missing:
            raise UserError(f"{len(missing)} shard(s) listed in {path} do not exist, first: {missing[0]}")
        refs, corpus, meta = _refs_with_corpus_facts(uris)
        return Target("list", path, refs, dataset_uri=corpus, dataset=meta)
    raise UserError(f"{path}: expected a corpus folder, a shard .tar or a list of shard URLs")


# ---------------------------------------------------------------- reading shards


def iter_raw_samples(shard_uri: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: bytes}) for every sample of a shard, in tar order, streamed (microturn.format)."""
    from microturn.format import FormatError, iter_samples as format_iter_samples

    try:
        yield from format_iter_samples(shard_uri)
    except FormatError as exc:
        raise UserError(f"{shard_uri}: {exc.code}: {exc.message} (run `microturn validate`)") from None


def decode(key: str, members: dict[str, bytes], layout: Layout = Layout()) -> SampleView:
    """Decode one sample's members with microturn.format; malformed members -> ``UserError``."""
    from microturn.format import FormatError, decode_sample

    try:
        decoded = decode_sample(members, key, table=layout.table, known=layout.known)
    except FormatError as exc:
        raise UserError(f"sample {key}: {exc.code}: {exc.message}") from None
    return view_from_decoded(key, decoded, layout.table)


def iter_samples(shard_uri: str, layout: Layout = Layout()) -> Iterator[SampleView]:
    """The samples of one shard, decoded as ``layout`` (``Target.layout``) says."""
    for key, members in iter_raw_samples(shard_uri):
        yield decode(key, members, layout)


def read_index(dataset_uri: Optional[str]) -> list[dict[str, Any]]:
    """Rows of index.parquet (empty when there is no corpus folder or no index)."""
    if dataset_uri is None:
        return []
    uri = storage.join(dataset_uri, "index.parquet")
    if not storage.exists(uri):
        return []
    try:
        with storage.open_input(uri) as fh:
            return storage.read_parquet(fh).to_pylist()
    except (OSError, ValueError) as exc:  # a damaged index (ArrowInvalid is a ValueError)
        raise UserError(f"{uri}: unreadable index ({exc.__class__.__name__}: {exc}); run `microturn validate`") from None


def find_sample(target: Target, key: str) -> SampleView:
    """The sample with this key; the index says which shard holds it, else every shard is scanned."""
    if "." in key or "/" in key:
        raise UserError(f"{key!r} is not a sample key (keys look like <session>-000000, without dots)")
    order = list(target.shards)
    rows = [r for r in read_index(target.dataset_uri) if r.get("key") == key]
    if rows and rows[0].get("shard"):
        hit = target.shard(str(rows[0]["shard"]).split("/")[-1])
        if hit is not None:
            order.remove(hit)
            order.insert(0, hit)
    layout = target.layout
    for ref in order:
        for k, members in iter_raw_samples(ref.uri):
            if k == key:
                return decode(k, members, layout)
    keys = _nearby_keys(target, key)
    hint = f"; keys like it: {', '.join(keys)}" if keys else ""
    raise UserError(f"no sample {key!r} in {target.uri}{hint}")


def _nearby_keys(target: Target, key: str, limit: int = 3) -> list[str]:
    session = key.rsplit("-", 1)[0]
    rows = read_index(target.dataset_uri)
    keys = [str(r.get("key")) for r in rows if str(r.get("key", "")).startswith(session)]
    return keys[:limit]


def load_build_config(dataset_uri: Optional[str]):
    """The corpus' resolved build config (config.yaml next to dataset.json), or defaults."""
    import yaml

    from microturn.config import BuildConfig

    if dataset_uri is not None:
        uri = storage.join(dataset_uri, "config.yaml")
        if storage.exists(uri):
            data = yaml.safe_load(io.BytesIO(storage.read_bytes(uri))) or {}
            return BuildConfig.model_validate(data), True
    return BuildConfig(), False
