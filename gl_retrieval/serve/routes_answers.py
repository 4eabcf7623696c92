"""Answer routes: ``/v1/ask`` (JSON or server-sent events) and OpenAI's ``/v1/chat/completions``.

Both need the config's ``llm`` section (else 400 ``llm_not_configured``). The chat route hands the
last user message, with the earlier turns as chat history, to ``pipe.as_chat_engine`` (LlamaIndex's
condense-plus-context engine over the pipeline's two stages); ``/v1/ask`` streams
``pipe.ask_stream``. Streams run in a worker thread (:mod:`gl_retrieval.serve.streaming`): the
sources are found within ``serve.request_timeout_s``, then each token within
``serve.llm_stall_timeout_s``; a client that disconnects stops the generation.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from gl_retrieval.errors import LLMNotConfiguredError
from gl_retrieval.retrieval.results import RankedNode
from gl_retrieval.serve.responses import APIError, FastJSON, RequestLimits, status_of
from gl_retrieval.serve.schemas import AskRequest, ChatCompletionRequest, ChatMessageIn
from gl_retrieval.serve.service import RetrievalService
from gl_retrieval.serve.streaming import SSE_HEADERS, Feed, LiveAnswer, StoppableLLM, sse

__all__ = ["add_answer_routes", "error_event"]

log = logging.getLogger("gl_retrieval.serve")

_SYSTEM_ROLES = ("system", "developer")


def error_event(e: BaseException) -> dict[str, Any]:
    """``{"error": {"type", "message"}}`` for an error in the middle of a stream (a bug's
    traceback goes to the server log, never to the client)."""
    _, kind, _ = status_of(e)
    if kind == "internal_error":
        log.error("error in an answer stream", exc_info=e)
        return {"error": {"type": kind, "message": "internal server error (see the server log)"}}
    message = e.message if isinstance(e, APIError) else str(e)
    return {"error": {"type": kind, "message": message}}


def _source(node: Any) -> dict[str, Any]:
    """A source as ``/v1/query`` returns it (the chat engine hands on ``RankedNode``s; another
    node postprocessor's plain nodes get the same shape)."""
    hit = node if isinstance(node, RankedNode) else RankedNode.from_retrieved(node)
    return hit.to_dict()


def _text(message: ChatMessageIn) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise APIError(
                422,
                "invalid_request",
                f"a {message.role} message has a {part.get('type')!r} content part: only text "
                "parts are supported",
            )
        parts.append(part["text"])
    return "".join(parts)


def split_messages(messages: list[ChatMessageIn]) -> tuple[str, list[Any], str | None]:
    """OpenAI's messages as the chat engine takes them: the last user message, the earlier
    turns (user and assistant) as chat history, and the system messages joined as the system
    prompt (None without one).

    Raises:
        APIError: 422 when the last message is not the user's, or a tool message is sent.
    """
    from llama_index.core.llms import ChatMessage, MessageRole

    system: list[str] = []
    turns: list[ChatMessageIn] = []
    for m in messages:
        if m.role in _SYSTEM_ROLES:
            system.append(_text(m))
        elif m.role in ("user", "assistant"):
            turns.append(m)
        else:
            raise APIError(
                422,
                "invalid_request",
                f"role {m.role!r} is not supported: this model answers from the retrieved "
                "sources, without tools",
            )
    if not turns or turns[-1].role != "user":
        raise APIError(422, "invalid_request", "the last message must be the user's question")
    roles = {"user": MessageRole.USER, "assistant": MessageRole.ASSISTANT}
    history = [ChatMessage(role=roles[m.role], content=_text(m)) for m in turns[:-1]]
    return _text(turns[-1]), history, "\n\n".join(system) if system else None


def _llm_or_refuse(service: RetrievalService, route: str) -> Any:
    llm = service.pipe.llm
    if llm is None:
        raise LLMNotConfiguredError(
            f"{route} needs an LLM, but the config has no `llm` section: add "
            "`llm: {provider: ollama, model: llama3.2}` (retrieval works without one: "
            "use /v1/query)"
        )
    return llm


def chat_producer(
    service: RetrievalService,
    llm: Any,
    message: str,
    history: list[Any],
    system_prompt: str | None,
    options: dict[str, Any],
) -> Any:
    """The chat turn, for :class:`LiveAnswer`: the engine's ``stream_chat`` on a
    :class:`StoppableLLM`, whose deltas go straight to the feed."""

    def produce(feed: Feed) -> None:
        tap = StoppableLLM(llm, on_token=lambda t: feed.emit("token", t), stop=feed.stop)
        engine = service.pipe.as_chat_engine(
            llm=tap, chat_history=history, system_prompt=system_prompt, **options
        )
        response = engine.stream_chat(message)
        feed.emit("sources", list(response.source_nodes))
        writer = response.write_response_to_history_thread
        if writer is not None:  # it consumes the LLM's stream; wait for it without spinning
            writer.join()
        else:
            for _ in response.response_gen:
                pass
        if response.exception is not None:
            raise response.exception

    return produce


def ask_producer(service: RetrievalService, body: AskRequest) -> Any:
    """``pipe.ask_stream`` for :class:`LiveAnswer`; returns the final ``Answer``."""

    def produce(feed: Feed) -> Any:
        stream = service.pipe.ask_stream(
            body.question, filters=body.filters, top_k=body.top_k, top_n=body.top_n
        )
        feed.emit("sources", list(stream.sources))
        try:
            for token in stream:
                if feed.stop.is_set():
                    return None
                feed.emit("token", token)
        finally:
            stream.close()
        return stream.to_answer()

    return produce


def add_answer_routes(app: FastAPI, service: RetrievalService, limits: RequestLimits) -> None:
    """Register ``/v1/ask`` and ``/v1/chat/completions`` on ``app``."""
    cfg = service.config
    guarded, check_text, check_items = limits.guarded, limits.check_text, limits.check_items

    async def start(produce: Any, name: str) -> LiveAnswer:
        live = LiveAnswer(produce, stall_timeout_s=cfg.llm_stall_timeout_s, name=name)
        await live.open(cfg.request_timeout_s)
        return live

    @app.post(
        "/v1/ask",
        summary="The configured LLM's answer: the `ask --json` shape, or SSE with stream: true",
    )
    async def ask(body: AskRequest) -> Any:
        check_text(body.question, "question")
        _llm_or_refuse(service, "/v1/ask")
        if not body.stream:

            async def work() -> Any:
                answer = await service.run(
                    service.pipe.ask,
                    body.question,
                    filters=body.filters,
                    top_k=body.top_k,
                    top_n=body.top_n,
                )
                return FastJSON(answer.to_dict())

            return await guarded(work)

        live = await start(ask_producer(service, body), "gl-serve-ask")

        async def events() -> AsyncIterator[bytes]:
            try:
                async for token in live.tokens():
                    yield sse({"text": token}, event="token")
            except Exception as e:
                yield sse(error_event(e), event="error")
                return
            if live.result is not None:
                yield sse(live.result.to_dict(), event="done")

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    @app.post(
        "/v1/chat/completions",
        summary="OpenAI's chat completions: a RAG answer from the configured LLM, + `sources`",
    )
    async def chat_completions(body: ChatCompletionRequest) -> Any:
        check_items(len(body.messages), "messages")
        message, history, system_prompt = split_messages(body.messages)
        check_text(message, "the last user message")
        llm = _llm_or_refuse(service, "/v1/chat/completions")
        max_tokens = body.max_completion_tokens or body.max_tokens
        if body.temperature is not None or max_tokens is not None:
            from gl_retrieval.answers.llms import with_options

            llm = with_options(llm, temperature=body.temperature, max_tokens=max_tokens)
        options = {"filters": body.filters, "top_k": body.top_k, "top_n": body.top_n}
        produce = chat_producer(service, llm, message, history, system_prompt, options)
        started = time.monotonic()
        live = await start(produce, "gl-serve-chat")
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": body.model,
        }
        sources = [_source(s) for s in live.sources]

        if not body.stream:

            async def work() -> Any:
                text = "".join([t async for t in live.tokens()]).strip()
                return FastJSON(
                    {
                        **head,
                        "object": "chat.completion",
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                                "logprobs": None,
                            }
                        ],
                        "sources": sources,
                    }
                )

            try:
                return await guarded(work, elapsed_s=time.monotonic() - started)
            finally:
                live.stop.set()

        chunk = {**head, "object": "chat.completion.chunk"}

        def delta(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**chunk, "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}

        async def chunks() -> AsyncIterator[bytes]:
            yield sse(delta({"role": "assistant", "content": ""}))
            try:
                async for token in live.tokens():
                    yield sse(delta({"content": token}))
            except Exception as e:
                yield sse(error_event(e))
                return
            yield sse({**delta({}, "stop"), "sources": sources})
            yield sse("[DONE]")

        return StreamingResponse(chunks(), media_type="text/event-stream", headers=SSE_HEADERS)
