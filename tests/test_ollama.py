"""OllamaEmbedder and the Ollama LLM over real HTTP against a loopback Ollama look-alike.

The server (tests/ollama_server.py) computes real MiniLM vectors, records every request and
injects faults; the client side is the real ``ollama`` package and LlamaIndex's ``Ollama`` LLM.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import ChatMessage
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.core.settings import Settings

from gl_retrieval.answers.llms import llm_errors
from gl_retrieval.embedders.ollama import OllamaEmbedder
from gl_retrieval.errors import ConfigError, EmbeddingError, ModelLoadError, OllamaError
from gl_retrieval.ollama.client import resolve_base_url
from gl_retrieval.ollama.llm import build_ollama_llm
from tests.ollama_server import FakeOllama, closed_port, minilm_path

DOC = "search_document: "
QUERY = "search_query: "
EMBED = "/api/embed"


@pytest.fixture(autouse=True)
def _no_ollama_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests set OLLAMA_HOST themselves; the global Settings tripwire is in conftest.py."""
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    yield


def make(server: FakeOllama, **kwargs: Any) -> OllamaEmbedder:
    options: dict[str, Any] = {
        "base_url": server.url,
        "query_prefix": QUERY,
        "document_prefix": DOC,
        "timeout_s": 10.0,
        "backoff_s": 0.01,
    }
    return OllamaEmbedder(**{**options, **kwargs})


def embed_bodies(server: FakeOllama) -> list[dict[str, Any]]:
    return [r.body for r in server.requests_to(EMBED)]


# -- the wire: batching, prefixes, options ------------------------------------------------------


def test_documents_go_in_batches_with_the_prefix_once(ollama_server: FakeOllama) -> None:
    embedder = make(ollama_server, batch_size=64)
    docs = [f"document number {i} about topic {i % 7}" for i in range(130)]

    matrix = embedder.embed_documents(docs)

    assert matrix.shape == (130, 384)
    assert matrix.dtype == np.float32
    bodies = embed_bodies(ollama_server)
    assert [len(b["input"]) for b in bodies] == [64, 64, 2]
    sent = [text for b in bodies for text in b["input"]]
    assert sent == [DOC + d for d in docs]
    assert all(text.count(DOC) == 1 for text in sent)
    for body in bodies:
        assert body["model"] == "nomic-embed-text"
        assert body["options"] == {"num_ctx": 2048}
        assert body["keep_alive"] == "5m"
        assert body["truncate"] is False
    assert embedder.requests_sent == 3


def test_query_gets_the_query_prefix_and_vectors_are_minilm(
    ollama_server: FakeOllama, ollama_minilm: Any
) -> None:
    embedder = make(ollama_server)
    docs = ["The cat sat on the mat.", "Aspirin inhibits platelet aggregation."]

    doc_vectors = embedder.embed_documents(docs)
    query_vector = embedder.get_query_embedding("what stops blood clotting?")

    (_doc_body, query_body) = embed_bodies(ollama_server)
    assert query_body["input"] == [QUERY + "what stops blood clotting?"]
    expected_docs = ollama_minilm.encode([DOC + d for d in docs], normalize_embeddings=True)
    expected_query = ollama_minilm.encode(
        QUERY + "what stops blood clotting?", normalize_embeddings=True
    )
    np.testing.assert_allclose(doc_vectors, expected_docs, atol=1e-5)
    np.testing.assert_allclose(query_vector, expected_query, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(doc_vectors, axis=1), 1.0, atol=1e-5)


def test_vector_store_index_batches_through_llamaindex(ollama_server: FakeOllama) -> None:
    embedder = make(ollama_server, batch_size=4)
    texts = [
        "Paris is the capital of France.",
        "Mitochondria are the powerhouse of the cell.",
        "The Nile is a river in Africa.",
        "Python is a programming language.",
        "Insulin regulates blood sugar.",
        "Mount Everest is the highest mountain.",
    ]
    index = VectorStoreIndex(
        [TextNode(text=t, id_=str(i)) for i, t in enumerate(texts)], embed_model=embedder
    )

    hits = index.as_retriever(similarity_top_k=1).retrieve("which hormone controls glucose?")

    assert hits[0].node.get_content() == "Insulin regulates blood sugar."
    bodies = embed_bodies(ollama_server)
    assert [len(b["input"]) for b in bodies] == [4, 2, 1]
    assert bodies[-1]["input"] == [QUERY + "which hormone controls glucose?"]
    assert Settings._llm is None and Settings._embed_model is None


def test_progress_bar_counts_batches(
    ollama_server: FakeOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    make(ollama_server, batch_size=2).embed_documents(["a", "b", "c"], show_progress=True)

    assert "2/2" in capsys.readouterr().err


# -- construction, warmup, fingerprint -----------------------------------------------------------


def test_construction_makes_no_request(ollama_server: FakeOllama) -> None:
    make(ollama_server)
    OllamaEmbedder(base_url=f"127.0.0.1:{closed_port()}")

    assert ollama_server.requests == []


def test_warmup_learns_the_dimension_with_one_request(ollama_server: FakeOllama) -> None:
    embedder = make(ollama_server)

    embedder.warmup()

    assert embedder.dimension == 384
    assert len(ollama_server.requests_to(EMBED)) == 1


def test_fingerprint_leaves_out_the_host(ollama_server: FakeOllama) -> None:
    by_ip = make(ollama_server, num_ctx=512)
    by_name = make(ollama_server, num_ctx=512, base_url=f"localhost:{ollama_server.port}")

    fingerprint = by_ip.fingerprint()

    assert fingerprint == {
        "provider": "ollama",
        "model": "nomic-embed-text",
        "query_prefix": QUERY,
        "document_prefix": DOC,
        "normalize": True,
        "dimension": 384,
        "num_ctx": 512,
    }
    assert by_name.fingerprint() == fingerprint
    assert json.loads(json.dumps(fingerprint)) == fingerprint
    assert make(ollama_server).fingerprint()["num_ctx"] == 2048


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "embedder.batch_size must be > 0, but got 0"),
        ({"timeout_s": 0}, "embedder.timeout_s must be > 0, but got 0"),
        ({"num_ctx": -1}, "embedder.num_ctx must be > 0, but got -1"),
        ({"max_retries": -1}, "embedder.max_retries must be >= 0, but got -1"),
        ({"base_url": "localhost:port"}, "embedder.base_url has an invalid port"),
    ],
)
def test_bad_settings_raise_config_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        OllamaEmbedder(**kwargs)


# -- the server address -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        (None, "http://localhost:11434"),
        ("0.0.0.0:11434", "http://127.0.0.1:11434"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        ("gpu-box", "http://gpu-box:11434"),
        ("gpu-box:8080", "http://gpu-box:8080"),
        (":9999", "http://localhost:9999"),
        ("http://gpu-box", "http://gpu-box:80"),
        ("https://ollama.example.com/", "https://ollama.example.com:443"),
        ("http://[::1]:8080/proxy/", "http://[::1]:8080/proxy"),
    ],
)
def test_base_url_is_normalised(raw: str | None, url: str) -> None:
    assert resolve_base_url(raw) == url


def test_ollama_host_is_honoured(
    ollama_server: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", ollama_server.host)

    embedder = OllamaEmbedder()
    llm = build_ollama_llm(model="llama3.2")

    assert embedder.base_url == ollama_server.url
    assert llm.base_url == ollama_server.url
    assert embedder.embed_queries(["hello"]).shape == (1, 384)
    assert OllamaEmbedder(base_url="other:1").base_url == "http://other:1"


def test_bad_ollama_host_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "ftp://box")

    with pytest.raises(ConfigError, match="OLLAMA_HOST"):
        OllamaEmbedder()


# -- failures -----------------------------------------------------------------------------------


def test_missing_model_says_to_pull_it(ollama_server: FakeOllama) -> None:
    embedder = make(ollama_server, model="nope-embed")

    with pytest.raises(OllamaError) as info:
        embedder.warmup()

    message = str(info.value)
    assert message == (
        f"Ollama at {ollama_server.url} has no model 'nope-embed': run `ollama pull nope-embed` "
        "on the machine serving it"
    )
    assert len(ollama_server.requests_to(EMBED)) == 1  # a 404 is not retried


def test_server_down_fails_fast_with_the_url(ollama_server: FakeOllama) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    embedder = OllamaEmbedder(base_url=url, max_retries=3, backoff_s=0.5)

    start = time.perf_counter()
    with pytest.raises(OllamaError) as info:
        embedder.embed_documents(["x"])
    elapsed = time.perf_counter() - start

    assert elapsed < 2.0
    assert url in str(info.value)
    assert "ollama serve" in str(info.value)


def test_hung_server_times_out(ollama_server: FakeOllama) -> None:
    ollama_server.hang_next(10.0)
    embedder = make(ollama_server, timeout_s=0.5, max_retries=3)

    start = time.perf_counter()
    with pytest.raises(OllamaError) as info:
        embedder.embed_documents(["x"])
    elapsed = time.perf_counter() - start

    assert elapsed < 2.0
    message = str(info.value)
    assert ollama_server.url in message
    assert "0.5 s" in message and "timed out" in message and "embedder.timeout_s" in message
    assert len(ollama_server.requests_to(EMBED)) == 1


def test_transient_500_is_retried(ollama_server: FakeOllama) -> None:
    ollama_server.fail_next(1, status=500)
    embedder = make(ollama_server)

    matrix = embedder.embed_documents(["a", "b"])

    assert matrix.shape == (2, 384)
    bodies = embed_bodies(ollama_server)
    assert len(bodies) == 2 and bodies[0] == bodies[1]


def test_dropped_connection_is_retried(ollama_server: FakeOllama) -> None:
    ollama_server.drop_next(1)

    matrix = make(ollama_server).embed_documents(["a"])

    assert matrix.shape == (1, 384)
    assert len(ollama_server.requests_to(EMBED)) == 2


def test_persistent_500_gives_up_with_the_last_error(ollama_server: FakeOllama) -> None:
    ollama_server.fail_next(10, status=503, message="server busy")
    embedder = make(ollama_server, max_retries=2)

    with pytest.raises(
        OllamaError, match=r"3 attempts, last error: server busy \(status code: 503\)"
    ):
        embedder.embed_documents(["a"])
    assert len(ollama_server.requests_to(EMBED)) == 3


def test_client_error_is_not_retried(ollama_server: FakeOllama) -> None:
    ollama_server.fail_next(1, status=400, message="invalid options")

    with pytest.raises(OllamaError, match=r"invalid options \(HTTP 400\)"):
        make(ollama_server).embed_documents(["a"])
    assert len(ollama_server.requests_to(EMBED)) == 1


def test_wrong_number_of_vectors_is_refused(ollama_server: FakeOllama) -> None:
    ollama_server.wrong_count_next(-1)

    with pytest.raises(EmbeddingError, match="returned 2 vectors for 3 inputs"):
        make(ollama_server).embed_documents(["a", "b", "c"])


def test_dimension_change_is_refused(ollama_server: FakeOllama) -> None:
    embedder = make(ollama_server)
    embedder.embed_documents(["a"])
    ollama_server.wrong_dimension_next(100)

    with pytest.raises(EmbeddingError, match=r"100-dimensional .* earlier answers had 384"):
        embedder.embed_documents(["b"])


# -- over-long inputs ---------------------------------------------------------------------------

LONG = "Aspirin irreversibly inhibits cyclooxygenase in platelets. " * 20


def test_server_refusal_is_bisected_to_the_long_input(ollama_server: FakeOllama) -> None:
    ollama_server.context_length = 64
    embedder = make(ollama_server, num_ctx=64, batch_size=4)
    docs = [f"short document {i}" for i in range(10)]
    docs[6] = LONG

    with pytest.raises(EmbeddingError) as info:
        embedder.embed_documents(docs)

    message = str(info.value)
    assert "refused 1 input(s)" in message
    assert "input #6 'Aspirin irreversibly inhibits cyclooxygenase in platelets. A…'" in message
    assert f"{len(DOC + LONG):,} chars, over num_ctx=64 tokens" in message
    assert "embedder.tokenizer" in message
    sizes = [len(b["input"]) for b in embed_bodies(ollama_server)]
    assert sizes == [4, 4, 2, 2, 1, 1]  # ok, refused, bisect [4,5] ok, [6,7] refused, 6, 7


def test_local_tokenizer_refuses_before_sending(ollama_server: FakeOllama) -> None:
    embedder = make(ollama_server, num_ctx=64, tokenizer=minilm_path())
    total = ollama_server.count_tokens(DOC + LONG)  # what the server would count

    with pytest.raises(EmbeddingError) as info:
        embedder.embed_documents(["fine", LONG])

    message = str(info.value)
    assert "input #1 'Aspirin" in message
    assert f"{total - 2:,} tokens + 2 special = {total:,} > num_ctx=64, {total - 64:,} over" in (
        message
    )
    assert ollama_server.requests == []


def test_check_lengths_names_the_chunk_id(ollama_server: FakeOllama) -> None:
    embedder = make(ollama_server, num_ctx=64, tokenizer=minilm_path())

    embedder.check_lengths(["fine", "also fine"], ids=["a", "b"])
    with pytest.raises(EmbeddingError, match=r"chunk 'doc-2#0' 'Aspirin .*over"):
        embedder.check_lengths(["fine", LONG], ids=["doc-1#0", "doc-2#0"])
    assert ollama_server.requests == []


def test_count_tokens_matches_the_server(ollama_server: FakeOllama) -> None:
    embedder = make(ollama_server, tokenizer=minilm_path())
    texts = ["hello world", LONG]

    assert embedder.count_tokens(texts) == [ollama_server.count_tokens(t) - 2 for t in texts]
    assert embedder.max_tokens == 2046
    assert make(ollama_server).count_tokens(texts) is None


def test_missing_tokenizer_is_a_model_load_error(ollama_server: FakeOllama, tmp_path: Any) -> None:
    embedder = make(ollama_server, tokenizer=tmp_path)

    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        embedder.count_tokens(["x"])


# -- the LLM ------------------------------------------------------------------------------------

NODES = [
    NodeWithScore(node=TextNode(text="Aspirin inhibits platelet aggregation."), score=0.9),
    NodeWithScore(node=TextNode(text="Paris is the capital of France."), score=0.1),
]


def _ask(llm: Any, question: str, nodes: list[Any]) -> str:
    """``ask``'s synthesis step: the sources numbered, LlamaIndex's synthesizer, ASK_PROMPT."""
    from llama_index.core.prompts import PromptTemplate
    from llama_index.core.schema import NodeWithScore, QueryBundle

    from gl_retrieval.answers.engines import ASK_PROMPT, build_query_engine, numbered_sources

    hits = [n if isinstance(n, NodeWithScore) else NodeWithScore(node=n) for n in nodes]
    engine = build_query_engine(
        VectorStoreIndex([], embed_model=MockEmbedding(embed_dim=4)).as_retriever(),
        llm=llm,
        text_qa_template=PromptTemplate(ASK_PROMPT),
    )
    with llm_errors(llm):
        return str(engine.synthesize(QueryBundle(query_str=question), numbered_sources(hits)))


def test_llm_answers_from_numbered_sources(ollama_server: FakeOllama) -> None:
    llm = build_ollama_llm(
        model="llama3.2", base_url=ollama_server.url, timeout_s=5, context_window=4096
    )

    answer = _ask(llm, "What does aspirin do?", NODES)

    assert answer == "According to [1], Aspirin inhibits platelet aggregation."
    (request,) = ollama_server.requests  # no /api/show: the context window was given
    assert request.path == "/api/chat"
    body = request.body
    assert body["model"] == "llama3.2" and body["stream"] is False
    assert body["options"]["num_ctx"] == 4096
    user = body["messages"][-1]["content"]
    assert "[1] Aspirin inhibits platelet aggregation.\n" in user
    assert "[2] Paris is the capital of France." in user and "[1], [2]" in user
    assert "Question: What does aspirin do?" in user
    assert llm.request_timeout == 5.0


def test_llm_streams_and_asks_the_server_for_its_context(ollama_server: FakeOllama) -> None:
    llm = build_ollama_llm(model="llama3.2", base_url=ollama_server.url, timeout_s=5)

    chunks = list(llm.stream_chat([ChatMessage(role="user", content="[1] Streaming works.")]))

    assert chunks[-1].message.content == "According to [1], Streaming works."
    assert [r.path for r in ollama_server.requests] == ["/api/show", "/api/chat"]


def test_llm_missing_model_says_to_pull_it(ollama_server: FakeOllama) -> None:
    llm = build_ollama_llm(model="nope-chat", base_url=ollama_server.url, context_window=2048)

    with pytest.raises(OllamaError, match=r"has no model 'nope-chat': run `ollama pull nope-chat`"):
        _ask(llm, "q", NODES)


def test_llm_server_down_and_timeout(ollama_server: FakeOllama) -> None:
    down = build_ollama_llm(model="llama3.2", base_url=f"127.0.0.1:{closed_port()}")
    with pytest.raises(OllamaError, match=r"ollama serve.*llm\.base_url"):
        _ask(down, "q", NODES)

    ollama_server.hang_next(10.0)
    slow = build_ollama_llm(
        model="llama3.2", base_url=ollama_server.url, timeout_s=0.5, context_window=2048
    )
    start = time.perf_counter()
    with pytest.raises(OllamaError, match=r"within 0\.5 s .*llm\.timeout_s"):
        _ask(slow, "q", NODES)
    assert time.perf_counter() - start < 2.0


def test_global_settings_stay_untouched(ollama_server: FakeOllama) -> None:
    embedder = make(ollama_server)
    llm = build_ollama_llm(model="llama3.2", base_url=ollama_server.url, context_window=2048)
    index = VectorStoreIndex(
        [TextNode(text="Aspirin inhibits platelet aggregation.")], embed_model=embedder
    )
    nodes = index.as_retriever(similarity_top_k=1).retrieve("aspirin")

    _ask(llm, "What does aspirin do?", nodes)

    assert Settings._llm is None
    assert Settings._embed_model is None
