"""`gl-retrieval serve` as its own process: SIGTERM drains; another process's `index` commit
is picked up with zero failed requests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gl_retrieval import RetrievalPipeline
from gl_retrieval.config import parse_config
from tests.conftest import MINILM, ROOT, SMALL_CORPUS, write_corpus
from tests.serve_helpers import free_port, running_server, wait_ready

CLI = [sys.executable, "-c", "from gl_retrieval.cli import main; main()"]


def _config(tmp: Path) -> dict[str, Any]:
    corpus = write_corpus(tmp / "corpus.jsonl", SMALL_CORPUS)
    return {
        "embedder": {"provider": "huggingface", "model": MINILM},
        "retriever": {"top_k": 5, "mode": "hybrid"},
        "storage": {"persist_dir": str(tmp / "index")},
        "sources": [{"path": str(corpus)}],
        "chunking": {"chunk_size": 128, "chunk_overlap": 16},
        "serve": {"max_queue_wait_ms": None, "reload_interval_s": 0.2, "drain_timeout_s": 15},
    }


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_sigterm_stops_accepting_drains_in_flight_and_exits_0(
    tmp_path: Path, minilm_embedder: Any
) -> None:
    cfg = _config(tmp_path)
    RetrievalPipeline.from_config(cfg, embedder=minilm_embedder).index()
    cfg_file = tmp_path / "serve.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "serve", str(cfg_file), "--port", str(port)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, timeout_s=120, path="/readyz")
        # An in-flight request: headers and half the body sent, the rest after SIGTERM.
        body = json.dumps({"query": "which model reads query and passage together?"}).encode()
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            b"POST /v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.8)
        with pytest.raises(httpx.ConnectError):  # no longer accepting
            httpx.get(url + "/healthz", timeout=2)
        sock.sendall(body[10:])
        sock.settimeout(30)
        raw = b""
        while b"\r\n\r\n" not in raw or len(raw.split(b"\r\n\r\n", 1)[1]) < 10:
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
        sock.close()
        assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.stdout.read() if proc.stdout else ""
    assert "Traceback" not in out, out


@pytest.mark.slow
def test_generation_committed_by_another_process_is_served_with_zero_failures(
    tmp_path: Path, minilm_embedder: Any
) -> None:
    cfg = _config(tmp_path)
    pipe = RetrievalPipeline.from_config(cfg, embedder=minilm_embedder)
    pipe.index()
    with running_server(parse_config(cfg), pipeline=pipe) as server:
        first = httpx.get(server.url + "/v1/info").json()["generation"]
        failures: list[str] = []
        found = threading.Event()
        stop = threading.Event()

        def hammer() -> None:
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    r = c.post(server.url + "/v1/query", json={"query": "striped savanna animal"})
                    if r.status_code != 200:
                        failures.append(r.text)
                    elif r.json()["results"][0]["doc_id"] == "zebra":
                        found.set()

        workers = [threading.Thread(target=hammer) for _ in range(3)]
        for w in workers:
            w.start()
        try:
            corpus = Path(cfg["sources"][0]["path"])
            zebra = {"_id": "zebra", "text": "Zebras are striped animals of the savanna."}
            with corpus.open("a") as f:
                f.write(json.dumps(zebra) + "\n")
            cfg_file = tmp_path / "index.yaml"
            cfg_file.write_text(yaml.safe_dump(cfg))
            subprocess.run(
                [*CLI, "index", str(cfg_file), "--json"],
                env=_env(),
                check=True,
                capture_output=True,
                timeout=180,
            )
            assert found.wait(timeout=30), "the new document was never served"
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=30)
        assert failures == []
        info = httpx.get(server.url + "/v1/info").json()
        assert info["generation"] != first and info["documents"] == len(SMALL_CORPUS) + 1
        metrics = httpx.get(server.url + "/metrics").text
        assert f'gl_retrieval_generation{{generation="{info["generation"]}"}} 1.0' in metrics
