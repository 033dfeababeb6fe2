"""The sample format (docs/format.md): one package owns member names, dtypes and shapes (the member
table), their encoding, samples, the tar layout with our reader and writer, and dataset.json.

A sample is a set of tar members ``<key>.<suffix>``; WebDataset splits a member name at the first dot
of its basename, so keys never hold dots. Arrays are ``.npy`` written without pickles and JSON is UTF-8
with sorted keys, so any WebDataset reader with the standard decoders (numpy, json) reads a sample
without importing microturn.

- ``members``: ``MemberSpec``, ``MemberTable``, the core and default representation members;
- ``codec``: ``.npy`` and JSON bytes, bounded decoding;
- ``tar``: the deterministic tar writer and the fast, bounded tar reader;
- ``sample``: ``encode_sample`` / ``decode_sample`` / ``DecodedSample`` and the shape and meta checks;
- ``dataset``: dataset.json, the index and quarantine schemas and rows, ``iter_dataset``.
"""

from microturn.errors import FormatError
from microturn.format.codec import decode_json, decode_npy, encode_json, encode_npy, jsonable
from microturn.format.dataset import (
    DATASET_JSON,
    INDEX_COLUMNS,
    INDEX_OPTIONAL_COLUMNS,
    INDEX_PARQUET,
    QUARANTINE_COLUMNS,
    QUARANTINE_PARQUET,
    SHARDS_DIR,
    arrow_schema,
    dataset_json_problems,
    fingerprints_of,
    index_row_from_meta,
    is_plain_name,
    iter_dataset,
    known_dims_of_dataset,
    member_table_of_dataset,
    read_dataset_json,
)
from microturn.format.members import (
    CORE_MEMBERS,
    DEFAULT_REPRESENTATION_MEMBERS,
    FORMAT_NAME,
    FORMAT_VERSION,
    FRAME_INDEX,
    KEY_RE,
    MEMBERS,
    MemberSpec,
    MemberTable,
    member_table,
    member_table_from_json,
    sample_key,
    split_member_name,
)
from microturn.format.sample import (
    EVENT_KINDS,
    META_REQUIRED,
    DecodedSample,
    decode_meta,
    decode_sample,
    encode_sample,
    meta_type_problems,
    shape_problems,
)
from microturn.format.tar import (
    TAR_MAX_MEMBER_BYTES,
    TarStream,
    iter_sample_views,
    iter_samples,
    iter_tar,
    iter_tar_members,
    iter_tar_views,
    tar_header,
)

__all__ = [
    "CORE_MEMBERS", "DATASET_JSON", "DEFAULT_REPRESENTATION_MEMBERS", "EVENT_KINDS", "FORMAT_NAME",
    "FORMAT_VERSION", "FRAME_INDEX", "INDEX_COLUMNS", "INDEX_OPTIONAL_COLUMNS", "INDEX_PARQUET", "KEY_RE", "MEMBERS",
    "META_REQUIRED", "QUARANTINE_COLUMNS", "QUARANTINE_PARQUET", "SHARDS_DIR", "TAR_MAX_MEMBER_BYTES",
    "DecodedSample", "FormatError", "MemberSpec", "MemberTable", "TarStream", "arrow_schema",
    "dataset_json_problems", "decode_json", "decode_meta", "decode_npy", "decode_sample", "encode_json",
    "encode_npy", "encode_sample", "fingerprints_of", "index_row_from_meta", "is_plain_name", "iter_dataset",
    "iter_sample_views", "iter_samples", "iter_tar", "iter_tar_members", "iter_tar_views", "jsonable",
    "known_dims_of_dataset", "member_table", "member_table_from_json", "member_table_of_dataset",
    "meta_type_problems", "sample_key", "shape_problems", "split_member_name", "tar_header",
]
