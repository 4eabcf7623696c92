"""Streamed LLM answers: a generation in a worker thread, read from the event loop, sent as SSE.

A blocking LLM stream must not run on the event loop, and a client that goes away must stop it.
:class:`LiveAnswer` runs a *producer* (the chat engine's ``stream_chat``, or ``ask_stream``) in
its own thread; the producer hands the sources, each text delta and the end to the loop through
an ``asyncio.Queue`` (``call_soon_threadsafe``). The loop side reads them with a stall timeout
(``serve.llm_stall_timeout_s``) and, when it stops reading (the client disconnected, the stall
timeout fired, the request timed out), sets :attr:`LiveAnswer.stop`: the producer checks it
between tokens and closes the LLM's stream, which closes the connection to the LLM server, so
the generation stops there too.

LlamaIndex's sync ``stream_chat`` consumes the LLM's stream in a thread of its own, which its
``response_gen`` spins on (``time.sleep(0)``) and joins on ``close()``. So the chat producer
does not read ``response_gen``: it hands the engine a :class:`StoppableLLM`, which delegates to
the real LLM, reports each delta as it passes, and ends the stream once ``stop`` is set.

Example:
    >>> sse({"text": "hi"}, event="token")
    b'event: token\\ndata: {"text":"hi"}\\n\\n'
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.llms import LLM

from gl_retrieval.answers.llms import llm_errors
from gl_retrieval.serve.responses import APIError

__all__ = ["SSE_HEADERS", "LiveAnswer", "Producer", "StoppableLLM", "sse"]

log = logging.getLogger("gl_retrieval.serve")

#: Headers of every event stream: no caching, no proxy buffering (nginx honours the last one).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

#: What a producer is handed: ``emit(kind, value)`` and the stop flag. Kinds: ``"sources"``
#: (a list of ``RankedNode``, once, before the end), ``"token"`` (a text delta), ``"end"``
#: (the producer's result, e.g. the final ``Answer``).
Producer = Callable[["Feed"], Any]


def sse(data: Any, *, event: str | None = None) -> bytes:
    """One server-sent event: ``event: <name>`` (optional) and one ``data:`` line of JSON
    (a string is sent as it is, e.g. OpenAI's ``[DONE]``)."""
    text = (
        data
        if isinstance(data, str)
        else json.dumps(data, ensure_ascii=False, default=str, separators=(",", ":"))
    )
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


class Feed:
    """The producer's side of a :class:`LiveAnswer`: emits items onto the event loop's queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
        self._loop = loop
        self._queue = queue
        self.stop = threading.Event()

    def emit(self, kind: str, value: Any = None) -> None:
        """Hand one item to the loop; dropped once the reader has stopped."""
        if self.stop.is_set() and kind == "token":
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed (server shut down)
            self.stop.set()


class LiveAnswer:
    """A generation running in a worker thread, read from the event loop.

    Args:
        produce: Called in the worker thread with the :class:`Feed`; emits ``sources`` and
            ``token`` items, checks ``feed.stop``; its return value is the ``end`` item; an
            exception it raises reaches the reader.
        stall_timeout_s: Longest wait for the next token (then :meth:`tokens` raises 504).
        name: The worker thread's name.
    """

    def __init__(self, produce: Producer, *, stall_timeout_s: float, name: str) -> None:
        loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._feed = Feed(loop, self._queue)
        self._stall = stall_timeout_s
        self._early: list[str] = []  # tokens that arrived before the sources
        self.sources: list[Any] = []
        self.result: Any = None
        self.finished = threading.Event()  # the worker thread has returned
        self._thread = threading.Thread(target=self._run, args=(produce,), name=name, daemon=True)
        self._thread.start()

    @property
    def stop(self) -> threading.Event:
        """Set to stop the generation (the producer ends at its next token)."""
        return self._feed.stop

    def _run(self, produce: Producer) -> None:
        feed = self._feed
        try:
            feed.emit("end", produce(feed))
        except BaseException as e:  # handed to the reader, which answers with it
            feed.emit("error", e)
        finally:
            self.finished.set()

    async def open(self, timeout_s: float) -> list[Any]:
        """Wait for the sources (retrieval, reranking and any condensing done).

        Raises:
            APIError: 504 past ``timeout_s`` (the generation is stopped).
            Exception: what the producer raised before its sources (a bad filter, no index,
                the LLM server down), for the route's error mapping.
        """
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    kind, value = await self._queue.get()
                    if kind == "token":
                        self._early.append(value)
                    elif kind == "sources":
                        self.sources = list(value)
                        return self.sources
                    elif kind == "error":
                        raise value
                    else:  # "end" without sources: a producer bug
                        raise RuntimeError("the answer ended before its sources were known")
        except TimeoutError:
            self.stop.set()
            raise APIError(
                504,
                "timeout",
                f"the sources took over serve.request_timeout_s = {timeout_s} s",
            ) from None
        except BaseException:
            self.stop.set()
            raise

    async def tokens(self) -> AsyncIterator[str]:
        """The text deltas, as they are written; :attr:`result` is set at the end.

        Leaving the iteration early (a disconnect cancels it) stops the generation.

        Raises:
            APIError: 504 ``llm_stalled`` when no token came for the stall timeout.
            Exception: what the producer raised while generating (e.g. ``LLMError``).
        """
        try:
            for token in self._early:
                yield token
            self._early = []
            while True:
                try:
                    async with asyncio.timeout(self._stall):
                        kind, value = await self._queue.get()
                except TimeoutError:
                    raise APIError(
                        504,
                        "llm_stalled",
                        f"the LLM sent no token for serve.llm_stall_timeout_s = {self._stall} s; "
                        "the answer was cut",
                    ) from None
                if kind == "token":
                    yield value
                elif kind == "end":
                    self.result = value
                    return
                elif kind == "error":
                    raise value
        finally:
            self.stop.set()


class StoppableLLM(LLM):
    """An LLM that delegates to ``inner``; its streams report each delta to ``on_token`` and
    end early once ``stop`` is set (closing ``inner``'s stream, so the server stops generating).

    Prompt formatting happens here exactly as ``inner`` would do it (its system prompt and
    prompt functions are copied), and ``inner``'s failures become one-line ``LLMError`` /
    ``OllamaError`` (:func:`~gl_retrieval.answers.llms.llm_errors`).

    Args:
        inner: The LLM that answers.
        on_token: Called with each streamed text delta, in the generating thread.
        stop: Ends every stream at its next delta once set.
    """

    _inner: LLM = PrivateAttr()
    _on_token: Callable[[str], None] = PrivateAttr()
    _stop: threading.Event = PrivateAttr()

    def __init__(
        self, inner: LLM, *, on_token: Callable[[str], None], stop: threading.Event
    ) -> None:
        super().__init__(
            callback_manager=inner.callback_manager,
            system_prompt=inner.system_prompt,
            messages_to_prompt=inner.messages_to_prompt,
            completion_to_prompt=inner.completion_to_prompt,
            output_parser=inner.output_parser,
            pydantic_program_mode=inner.pydantic_program_mode,
            query_wrapper_prompt=inner.query_wrapper_prompt,
        )
        self._inner = inner
        self._on_token = on_token
        self._stop = stop

    @classmethod
    def class_name(cls) -> str:
        return "gl_retrieval_stoppable_llm"

    @property
    def metadata(self) -> LLMMetadata:
        with llm_errors(self._inner):
            return self._inner.metadata

    def _relay(self, stream: Any) -> Any:
        guard = llm_errors(self._inner)
        iterator = iter(stream)
        try:
            while not self._stop.is_set():
                with guard:
                    try:
                        item = next(iterator)
                    except StopIteration:
                        return
                if item.delta:
                    self._on_token(item.delta)
                yield item
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        with llm_errors(self._inner):
            return self._inner.chat(messages, **kwargs)

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        with llm_errors(self._inner):
            return self._inner.complete(prompt, formatted=formatted, **kwargs)

    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        with llm_errors(self._inner):
            stream = self._inner.stream_chat(messages, **kwargs)
        return self._relay(stream)

    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        with llm_errors(self._inner):
            stream = self._inner.stream_complete(prompt, formatted=formatted, **kwargs)
        return self._relay(stream)

    # The service drives every answer from a worker thread through the sync methods; the async
    # ones delegate (without the relay) so the object is a complete LLM.

    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        async with llm_errors(self._inner):
            return await self._inner.achat(messages, **kwargs)

    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        async with llm_errors(self._inner):
            return await self._inner.acomplete(prompt, formatted=formatted, **kwargs)

    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        return await self._inner.astream_chat(messages, **kwargs)

    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        return await self._inner.astream_complete(prompt, formatted=formatted, **kwargs)
