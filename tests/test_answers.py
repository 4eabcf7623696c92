"""LlamaIndex's own query and chat engines over the two stages, with an LLM or without one.

The LLM is LlamaIndex's Ollama client against the loopback Ollama stand-in (real HTTP, streaming
NDJSON ``/api/chat``), or an LLM object passed in code. The autouse ``settings_tripwire`` makes
LlamaIndex's global ``Settings.llm`` / ``Settings.embed_model`` raise on every path here.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from llama_index.core.base.response.schema import Response, StreamingResponse
from llama_index.core.llms import ChatMessage, MessageRole, MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine

from gl_retrieval import ConfigError, LLMNotConfiguredError, RankedNode, RetrievalPipeline
from tests.ollama_server import FakeOllama
from tests.test_ask import with_llm


@pytest.fixture()
def pipe(small_config: dict[str, Any], ollama_server: FakeOllama) -> RetrievalPipeline:
    p = RetrievalPipeline.from_config(with_llm(small_config, ollama_server.url))
    p.index(show_progress=False)
    return p


@pytest.fixture()
def bare(small_config: dict[str, Any]) -> RetrievalPipeline:
    p = RetrievalPipeline.from_config(small_config)
    p.index(show_progress=False)
    return p


def test_the_query_engine_is_llamaindexs_own_and_retrieval_only_without_an_llm(
    bare: RetrievalPipeline,
) -> None:
    engine = bare.as_query_engine(top_n=2)
    assert isinstance(engine, RetrieverQueryEngine)
    response = engine.query("what is BM25?")
    assert isinstance(response, Response) and response.metadata == {"retrieval_only": True}
    assert all(isinstance(n, RankedNode) for n in response.source_nodes)
    assert str(response).startswith("Retrieval only") and "bm25" in str(response)
    streamed = bare.as_query_engine(top_n=2, streaming=True).query("what is BM25?")
    assert isinstance(streamed, StreamingResponse)
    assert "".join(streamed.response_gen) == str(response)


def test_streaming_query_engine_sync_and_async(
    pipe: RetrievalPipeline, ollama_server: FakeOllama
) -> None:
    engine = pipe.as_query_engine(streaming=True, top_n=2)
    response = engine.query("what does pgvector add to PostgreSQL?")
    assert isinstance(response, StreamingResponse)
    tokens = list(response.response_gen)
    assert len(tokens) > 1 and "".join(tokens).strip()
    assert response.source_nodes[0].node.ref_doc_id == "pg"
    assert ollama_server.requests_to("/api/chat")[-1].body["stream"] is True

    async def run() -> str:
        r = await pipe.as_query_engine(streaming=True, top_n=2).aquery("what is BM25?")
        return "".join([t async for t in r.async_response_gen()])

    assert asyncio.run(run()).strip()


@pytest.mark.parametrize("mode", ["compact", "refine", "tree_summarize", "simple_summarize"])
def test_response_modes_answer_from_the_sources(pipe: RetrievalPipeline, mode: str) -> None:
    response = pipe.as_query_engine(response_mode=mode, top_n=2).query("what is dense retrieval?")
    assert str(response).strip() and len(response.source_nodes) == 2


def test_unknown_response_mode_lists_the_valid_ones(pipe: RetrievalPipeline) -> None:
    with pytest.raises(ConfigError, match=r"unknown response_mode 'nope'; use one of: .*compact"):
        pipe.as_query_engine(response_mode="nope")


def test_an_llm_passed_in_code_is_used_and_the_config_needs_none(
    small_config: dict[str, Any],
) -> None:
    pipe = RetrievalPipeline.from_config(small_config, llm=MockLLM(max_tokens=5))
    pipe.index(show_progress=False)
    response = pipe.as_query_engine(top_n=1).query("what is BM25?")
    assert response.metadata != {"retrieval_only": True} and str(response).strip()
    answer = pipe.ask("what is BM25?", top_n=1)
    assert answer.answer and answer.sources[0].doc_id == "bm25"


def test_chat_engine_condenses_follow_ups_and_attaches_sources(
    pipe: RetrievalPipeline, ollama_server: FakeOllama
) -> None:
    chat = pipe.as_chat_engine(system_prompt="Answer briefly.", top_n=2)
    first = chat.chat("what does pgvector add to PostgreSQL?")
    assert first.response and first.source_nodes[0].node.ref_doc_id == "pg"
    assert all(isinstance(n, RankedNode) for n in first.source_nodes)
    before = len(ollama_server.requests_to("/api/chat"))
    second = chat.stream_chat("and how do many processes share it?")
    tokens = list(second.response_gen)
    assert len(tokens) > 1 and second.source_nodes
    calls = ollama_server.requests_to("/api/chat")[before:]
    assert len(calls) == 2  # the follow-up was condensed with the history, then answered
    assert "pgvector" in str(calls[0].body["messages"])


def test_chat_modes_and_history(pipe: RetrievalPipeline) -> None:
    history = [
        ChatMessage(role=MessageRole.USER, content="what is BM25?"),
        ChatMessage(role=MessageRole.ASSISTANT, content="A lexical ranking function."),
    ]
    for mode in ("context", "condense_question", "condense_plus_context"):
        chat = pipe.as_chat_engine(chat_mode=mode, chat_history=history, top_n=2)
        assert chat.chat("and dense retrieval?").response
    with pytest.raises(ConfigError, match="unknown chat_mode 'agent'"):
        pipe.as_chat_engine(chat_mode="agent")

    async def run() -> str:
        r = await pipe.as_chat_engine(top_n=2).astream_chat("what is dense retrieval?")
        return "".join([t async for t in r.async_response_gen()])

    assert asyncio.run(run()).strip()


def test_a_chat_engine_needs_an_llm(bare: RetrievalPipeline) -> None:
    with pytest.raises(LLMNotConfiguredError, match="a chat engine needs an LLM"):
        bare.as_chat_engine()


def test_ask_stream_gives_the_sources_first_then_the_tokens(
    pipe: RetrievalPipeline,
) -> None:
    stream = pipe.ask_stream("what does pgvector add to PostgreSQL?", top_n=2)
    assert stream.sources[0].doc_id == "pg"
    tokens = list(stream)
    assert len(tokens) > 1 and stream.answer.startswith("According to [1]")
    assert stream.to_answer().to_dict()["sources"][0]["doc_id"] == "pg"
    whole = pipe.ask("what does pgvector add to PostgreSQL?", top_n=2)
    assert whole.answer == stream.answer


def test_closing_a_stream_stops_the_generation(pipe: RetrievalPipeline) -> None:
    with pipe.ask_stream("what does pgvector add to PostgreSQL?", top_n=2) as stream:
        it = iter(stream)
        first = next(it)
    assert first and not stream.done
    with pytest.raises(StopIteration):
        next(it)


def test_our_reranker_in_a_stock_llamaindex_engine(
    bare: RetrievalPipeline, tiny_cross_encoder: Any
) -> None:
    from gl_retrieval.config import RerankerConfig
    from gl_retrieval.retrieval.rerankers import build_reranker

    reranker = build_reranker(RerankerConfig(model=str(tiny_cross_encoder), top_n=2))
    retriever = bare.as_retriever(top_k=4)
    engine = RetrieverQueryEngine.from_args(
        retriever, llm=MockLLM(), node_postprocessors=[reranker]
    )
    response = engine.query("what is BM25?")
    assert len(response.source_nodes) == 2
    assert all(n.rerank_score is not None for n in response.source_nodes)


def test_an_openai_like_llm_from_config_answers_and_streams(
    small_config: dict[str, Any], openai_server: Any
) -> None:
    cfg = {
        **small_config,
        "llm": {"provider": "openai_like", "model": "local-model", "base_url": openai_server.url},
    }
    pipe = RetrievalPipeline.from_config(cfg)
    pipe.index(show_progress=False)
    assert type(pipe.llm).__name__ == "OpenAILike"
    answer = pipe.ask("what does pgvector add to PostgreSQL?", top_n=2)
    assert answer.answer and answer.sources[0].doc_id == "pg"
    stream = pipe.ask_stream("what does pgvector add to PostgreSQL?", top_n=2)
    assert len(list(stream)) > 1 and stream.answer == answer.answer
    chat = pipe.as_chat_engine(top_n=2).stream_chat("what is dense retrieval?")
    assert "".join(chat.response_gen).strip() and chat.source_nodes
