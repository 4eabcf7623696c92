"""Two `serve` replicas over one Postgres agree, and both pick up a new commit."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gl_retrieval import RetrievalPipeline
from gl_retrieval.config import parse_config
from gl_retrieval.ingest.sources import Document
from tests.conftest import MINILM, SMALL_CORPUS, write_corpus
from tests.serve_helpers import running_server
from tests.test_postgres import PG, pg  # noqa: F401  (the session's Postgres fixture)

pytestmark = pytest.mark.postgres


@pytest.fixture()
def pg_serve_config(pg: PG, tmp_path: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    table = f"t_{uuid.uuid4().hex[:10]}"
    corpus = write_corpus(tmp_path / "corpus.jsonl", SMALL_CORPUS)
    yield {
        "embedder": {"provider": "huggingface", "model": MINILM},
        "retriever": {"top_k": 5},
        "storage": {"backend": "postgres", "url": pg.url, "table": table},
        "sources": [{"path": str(corpus)}],
        "chunking": {"chunk_size": 128, "chunk_overlap": 16},
        "serve": {"max_queue_wait_ms": None, "reload_interval_s": 0.2},
    }
    for t in (f"data_{table}", f"data_{table}__build", f"{table}_documents", f"{table}_manifest"):
        pg.sql(f'DROP TABLE IF EXISTS "{t}"')


def test_two_replicas_on_one_postgres_agree_and_follow_new_commits(
    pg_serve_config: dict[str, Any], minilm_embedder: Any
) -> None:
    cfg = parse_config(pg_serve_config)
    writer = RetrievalPipeline(cfg, embedder=minilm_embedder)
    writer.index()
    replicas = [RetrievalPipeline(cfg, embedder=minilm_embedder) for _ in range(2)]
    queries = ["share one index between many processes", "lexical term frequency"]

    def ask(url: str, q: str) -> list[tuple[str, float]]:
        r = httpx.post(url + "/v1/query", json={"query": q, "filters": {"year": {">": 1990}}})
        assert r.status_code == 200, r.text
        return [(h["id"], round(h["score"], 5)) for h in r.json()["results"]]

    with (
        running_server(cfg, pipeline=replicas[0]) as a,
        running_server(cfg, pipeline=replicas[1]) as b,
    ):
        for q in queries:
            assert ask(a.url, q) == ask(b.url, q)
        gen = httpx.get(a.url + "/v1/info").json()["generation"]
        assert httpx.get(b.url + "/v1/info").json()["generation"] == gen

        docs = [Document(d["_id"], d["text"], d.get("metadata", {})) for d in SMALL_CORPUS]
        zebra = Document("zebra", "Zebras are striped animals of the savanna.", {"year": 2024})
        writer.index_documents([*docs, zebra])
        deadline = time.monotonic() + 20
        seen: set[str] = set()
        while time.monotonic() < deadline and len(seen) < 2:
            for name, s in (("a", a), ("b", b)):
                r = httpx.post(s.url + "/v1/query", json={"query": "striped savanna animal"})
                if r.status_code == 200 and r.json()["results"][0]["doc_id"] == "zebra":
                    seen.add(name)
            time.sleep(0.1)
        assert seen == {"a", "b"}
        new_a = httpx.get(a.url + "/v1/info").json()["generation"]
        assert new_a != gen and httpx.get(b.url + "/v1/info").json()["generation"] == new_a
        for q in [*queries, "striped savanna animal"]:
            assert ask(a.url, q) == ask(b.url, q)
