from __future__ import annotations

from pathlib import Path

import pytest

from gl_retrieval.config.presets import PRESETS, match_family, resolve_prefixes


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("BAAI/bge-base-en-v1.5", "bge"),
        ("BAAI/bge-small-en", "bge"),
        ("BAAI/bge-large-zh-v1.5", "bge-zh"),
        ("BAAI/bge-m3", "none"),
        ("intfloat/e5-base-v2", "e5"),
        ("intfloat/multilingual-e5-large", "e5"),
        ("nomic-embed-text", "nomic"),
        ("nomic-embed-text:latest", "nomic"),
        ("nomic-ai/nomic-embed-text-v1.5", "nomic"),
        ("thenlper/gte-base", "gte"),
        ("mixedbread-ai/mxbai-embed-large-v1", "mxbai"),
        ("mxbai-embed-large", "mxbai"),
        ("sentence-transformers/all-MiniLM-L6-v2", "minilm"),
        ("packaged:all-MiniLM-L6-v2", "minilm"),
        ("someone/unknown-model", "none"),
    ],
)
def test_families_match_by_name(model: str, family: str) -> None:
    assert match_family(model) == family


def test_prefix_values_are_exact() -> None:
    assert PRESETS["e5"] == ("query: ", "passage: ")
    assert PRESETS["nomic"] == ("search_query: ", "search_document: ")
    assert PRESETS["bge"] == ("Represent this sentence for searching relevant passages: ", "")


def test_a_local_path_matches_no_preset(tmp_path: Path) -> None:
    local = tmp_path / "bge-base-en-v1.5"
    local.mkdir()
    assert match_family(str(local)) == "none"
    assert resolve_prefixes(str(local)).query == ""
    assert resolve_prefixes(str(local), preset="bge").query.startswith("Represent")


def test_config_overrides_the_preset() -> None:
    p = resolve_prefixes("intfloat/e5-base-v2", query_prefix="", document_prefix="doc: ")
    assert (p.family, p.query, p.document) == ("e5", "", "doc: ")
