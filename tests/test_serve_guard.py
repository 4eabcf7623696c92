"""The guard in front of `serve`, over real loopback HTTP: slow bodies hold no admission slot
(408 past ``serve.body_timeout_s``), a chunked body over the limit gets 413, the ``Host`` and
``Origin`` checks and the JSON-only POSTs (DNS rebinding, cross-site requests), and an open
``/readyz`` that says only a status word."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gl_retrieval import RetrievalPipeline
from gl_retrieval.config import parse_config
from gl_retrieval.serve.guard import host_allowed
from tests.conftest import MINILM, SMALL_CORPUS, write_corpus
from tests.serve_helpers import running_server

KEY = "guard-test-key-7d1e"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUEUE = 8
BODY_TIMEOUT_S = 3.0
MAX_BODY = 4096
APP_ORIGIN = "https://app.example"


def _cfg(tmp: Path, **serve: Any) -> dict[str, Any]:
    corpus = write_corpus(tmp / "corpus.jsonl", SMALL_CORPUS)
    return {
        "embedder": {"provider": "huggingface", "model": MINILM},
        "retriever": {"top_k": 4, "mode": "dense"},
        "storage": {"persist_dir": str(tmp / "index")},
        "sources": [{"path": str(corpus)}],
        "chunking": {"chunk_size": 128, "chunk_overlap": 16},
        "serve": {
            "api_key": KEY,
            "queue_size": QUEUE,
            "max_queue_wait_ms": None,
            "body_timeout_s": BODY_TIMEOUT_S,
            "max_body_bytes": MAX_BODY,
            "cors_origins": [APP_ORIGIN],
            **serve,
        },
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, minilm_embedder: Any) -> Iterator[Any]:
    """A loopback server (default allowed hosts) with a small queue and body limits."""
    cfg = parse_config(_cfg(tmp_path_factory.mktemp("guard")))
    pipe = RetrievalPipeline(cfg, embedder=minilm_embedder)
    pipe.index()
    with running_server(cfg, pipeline=pipe) as server:
        yield server


def _port(server: Any) -> int:
    return int(server.url.rsplit(":", 1)[1])


async def _trickler(port: int, *, every_s: float, wait_s: float) -> tuple[bytes, float]:
    """A POST whose headers arrive whole and whose body then comes one byte every ``every_s``;
    returns the start of the answer and when it came (``b""``: none within ``wait_s``)."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEY}\r\nContent-Length: 2000\r\n\r\n".encode()
    )

    async def drip() -> None:
        with contextlib.suppress(OSError):
            while True:
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(every_s)

    dripping = asyncio.create_task(drip())
    try:
        head = await asyncio.wait_for(reader.read(64), wait_s)
    except (asyncio.TimeoutError, OSError):
        head = b""
    dripping.cancel()
    writer.close()
    return head, time.monotonic() - t0


def test_trickling_bodies_hold_no_slot_and_get_408(served: Any) -> None:
    """40 connections sending one byte a second (5 times the queue) while an honest client
    queries: every honest query gets 200, every trickler 408 after body_timeout_s."""
    port = _port(served)

    async def run() -> tuple[list[tuple[bytes, float]], list[int]]:
        tricklers = [
            asyncio.create_task(_trickler(port, every_s=1.0, wait_s=BODY_TIMEOUT_S + 5))
            for _ in range(5 * QUEUE)
        ]
        await asyncio.sleep(0.5)  # all connected, headers sent, bodies trickling
        codes = []
        async with httpx.AsyncClient(headers=AUTH, timeout=10) as client:
            end = time.monotonic() + BODY_TIMEOUT_S - 1.0
            while time.monotonic() < end:
                r = await client.post(served.url + "/v1/query", json={"query": "bm25"})
                codes.append(r.status_code)
        return list(await asyncio.gather(*tricklers)), codes

    answers, codes = asyncio.run(run())
    assert codes and set(codes) == {200}, codes
    assert all(head.startswith(b"HTTP/1.1 408") for head, _ in answers), answers[:3]
    assert all(BODY_TIMEOUT_S - 0.5 < took < BODY_TIMEOUT_S + 3 for _, took in answers), answers
    assert httpx.post(served.url + "/v1/query", json={"query": "bm25"}, headers=AUTH).is_success


def test_a_chunked_body_over_the_limit_gets_413(served: Any) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"query": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    r = httpx.post(
        served.url + "/v1/query",
        content=chunks(),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert r.status_code == 413, r.text
    assert "serve.max_body_bytes" in r.json()["error"]["message"]


def test_a_foreign_host_is_refused_but_probes_answer(served: Any) -> None:
    url = served.url
    evil = {**AUTH, "Host": "attacker.example"}
    r = httpx.get(url + "/v1/info", headers=evil)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_host"
    assert "serve.allowed_hosts" in r.json()["error"]["message"]
    assert httpx.post(url + "/v1/query", json={"query": "bm25"}, headers=evil).status_code == 400
    assert httpx.get(url + "/readyz?detail", headers=evil).status_code == 400
    assert httpx.get(url + "/readyz", headers=evil).status_code == 200
    assert httpx.get(url + "/healthz", headers=evil).status_code == 200
    port = _port(served)
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
        assert httpx.get(url + "/v1/info", headers={**AUTH, "Host": host}).status_code == 200


def test_posts_must_be_json_and_foreign_origins_are_refused(served: Any) -> None:
    url = served.url
    # The cross-site "simple request": text/plain needs no preflight, so it must not act.
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        r = httpx.post(url + "/v1/index", content=b"{}", headers={**AUTH, "Content-Type": ctype})
        assert r.status_code == 415 and r.json()["error"]["type"] == "unsupported_media_type"
    r = httpx.post(url + "/v1/query", content=b'{"query": "bm25"}', headers=AUTH)
    assert r.status_code == 415  # no Content-Type at all
    r = httpx.post(
        url + "/v1/query",
        content=b'{"query": "bm25"}',
        headers={**AUTH, "Content-Type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 200
    query = {"json": {"query": "bm25"}}
    r = httpx.post(url + "/v1/query", headers={**AUTH, "Origin": "https://evil.example"}, **query)
    assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden_origin"
    r = httpx.post(url + "/v1/index", headers={**AUTH, "Origin": "null"}, json={})
    assert r.status_code == 403
    r = httpx.post(url + "/v1/query", headers={**AUTH, "Origin": APP_ORIGIN}, **query)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP_ORIGIN
    same = {**AUTH, "Origin": f"http://127.0.0.1:{_port(served)}"}  # the server's own /docs
    assert httpx.post(url + "/v1/query", headers=same, **query).status_code == 200


def test_open_readyz_is_a_status_word_and_the_detail_needs_the_key(
    served: Any, tmp_path: Path, minilm_embedder: Any
) -> None:
    r = httpx.get(served.url + "/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready"}
    assert httpx.get(served.url + "/readyz?detail").status_code == 401
    r = httpx.get(served.url + "/readyz?detail", headers=AUTH)
    assert r.status_code == 200 and r.json()["generation"].startswith("gen-")

    # Not ready (nothing indexed): the open answer names no path and no command.
    raw = _cfg(tmp_path, allowed_hosts=["api.example"])
    cfg = parse_config(raw)
    pipe = RetrievalPipeline(cfg, embedder=minilm_embedder)
    with running_server(cfg, pipeline=pipe) as server:
        r = httpx.get(server.url + "/readyz")
        assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready"
        assert str(tmp_path) not in r.text and "gl-retrieval index" not in r.text
        named = {**AUTH, "Host": "api.example"}
        r = httpx.get(server.url + "/readyz?detail", headers=named)
        assert r.status_code == 503 and "gl-retrieval index" in r.json()["error"]["message"]
        # A configured serve.allowed_hosts replaces the loopback names.
        assert httpx.get(server.url + "/v1/info", headers=AUTH).status_code == 400
        assert httpx.get(server.url + "/v1/info", headers=named).status_code == 200


def test_host_patterns() -> None:
    assert host_allowed("api.example:443", ("api.example",))
    assert host_allowed("a.b.example", ("*.example",))
    assert not host_allowed("example", ("*.example",))
    assert not host_allowed("api.example.evil", ("api.example",))
    assert host_allowed("anything", ("*",))
    assert not host_allowed("", ("*",))
