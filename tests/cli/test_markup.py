"""Text from shards is data: words, speaker ids, fingerprints and keys print literally, never as rich
markup (a word "[/]" used to raise MarkupError; "[bold]" restyled the output)."""

from __future__ import annotations

from pathlib import Path

import pytest

from microturn.format import decode_sample, encode_sample
from microturn.records import Sample
from tests.factories import random_tokenized_session, write_corpus

TOKENIZERS = {
    "audio": {"fingerprint": "untrained:[/]", "vocab_size": 1024, "codebooks": 8},
    "frames": {"fingerprint": "untrained:0", "vocab_size": 1000},
    "text": {"fingerprint": "bytes:[red]v1", "vocab_size": 260},
}
SPEAKERS = ["[/]", "[bold]B"]


def _marked_up(sample: Sample) -> Sample:
    d = decode_sample(sample.members)
    words = [{**w, "text": "[bold]hey[/bold]" if i % 2 else "[/]"} for i, w in enumerate(d.words)]
    meta = {**d.meta, "speakers": SPEAKERS, "language": "[/red]",
            "fingerprints": {k: v["fingerprint"] for k, v in TOKENIZERS.items()}}
    members = encode_sample(meta=meta, arrays=d.arrays, words=words, events=d.events)
    return Sample(sample.key, members, {**sample.index_row, "bytes": sum(map(len, members.values()))})


@pytest.fixture(scope="module")
def marked_corpus(tmp_path_factory) -> Path:
    tok = random_tokenized_session("s0", 24000 * 6, seed=1)
    return write_corpus(tmp_path_factory.mktemp("markup"), tok, TOKENIZERS, edit=_marked_up)


def test_show_prints_words_and_speakers_literally(cli, marked_corpus):
    code, out, err = cli("show", marked_corpus, "s0-000000")
    assert code == 0, err
    for text in ("[/]", "[bold]B", "[bold]hey[/bold]", "untrained:[/]", "bytes:[red]v1", "[/red]"):
        assert text in out, text


def test_inspect_prints_keys_and_fingerprints_literally(cli, marked_corpus):
    code, out, err = cli("inspect", marked_corpus)
    assert code == 0, err
    assert "untrained:[/]" in out and "bytes:[red]v1" in out


def test_validate_prints_problems_literally(cli, marked_corpus, tmp_path):
    import shutil

    bad = tmp_path / "c"
    shutil.copytree(marked_corpus, bad)
    (bad / "shards" / "[red]extra.tar").write_bytes(b"")
    code, out, err = cli("validate", bad)
    assert code != 0 and "[red]extra.tar" in out + err
