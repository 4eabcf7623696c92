"""``RemotePipeline``: the in-process pipeline's retrieval API over HTTP.

It returns the same :class:`RankedNode` objects as :class:`RetrievalPipeline`, so an app
switches between in-process and remote with one line. httpx, with timeouts and bounded
retries on 503 (honouring ``Retry-After``, capped) and on connection errors.

Example:
    >>> from gl_retrieval.serve import RemotePipeline
    >>> pipe = RemotePipeline("http://127.0.0.1:8080", api_key="...")  # doctest: +SKIP
    >>> [h.doc_id for h in pipe.retrieve("what is BM25?", top_n=3)]  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, overload

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import QueryBundle

from gl_retrieval._deps import require
from gl_retrieval.answers.results import Answer
from gl_retrieval.errors import GLRetrievalError
from gl_retrieval.retrieval.results import RankedNode

__all__ = ["RemoteAnswerStream", "RemoteError", "RemotePipeline", "RemoteRetriever"]

_RETRY_STATUSES = frozenset({502, 503})
_MAX_RETRY_AFTER_S = 5.0


class RemoteError(GLRetrievalError):
    """The server answered with an error (its status, type and message are kept)."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(f"server answered {status} {kind}: {message}")
        self.status, self.kind, self.message = status, kind, message


def _node(d: Mapping[str, Any]) -> RankedNode:
    return RankedNode.from_dict(d)


def _filters_json(filters: Any) -> Any:
    if filters is None or isinstance(filters, (str, Mapping)):
        return filters
    if isinstance(filters, Sequence):
        out = list(filters)
        if all(isinstance(f, str) for f in out):
            return out
    raise GLRetrievalError(
        "RemotePipeline sends filters as strings like 'ticker=PENDLE' or a mapping "
        f"{{'ticker': 'PENDLE'}}, not {type(filters).__name__}"
    )


class RemotePipeline:
    """A ``gl-retrieval serve`` server, used like a :class:`RetrievalPipeline`.

    Args:
        url: The server, e.g. ``http://127.0.0.1:8080``.
        api_key: Sent as ``Authorization: Bearer``; None: no header.
        timeout_s: Per-request timeout.
        max_retries: Retries on 503 / 502 / connection errors (0: none).
        backoff_s: First retry delay; doubles each retry (a ``Retry-After`` wins, capped at 5 s).
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 3,
        backoff_s: float = 0.1,
    ) -> None:
        self._httpx = require("httpx", extra="serve")
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = self._httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0))
        self._max_retries = max(0, int(max_retries))
        self._backoff_s = backoff_s
        self._client: Any = None
        self._aclient: Any = None

    def __repr__(self) -> str:  # never shows the key
        return f"RemotePipeline({self.url!r})"

    # -- transport -------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._httpx.Client(
                base_url=self.url, headers=self._headers, timeout=self._timeout
            )
        return self._client

    def _aclient_for_loop(self) -> Any:
        # One AsyncClient per event loop (asyncio.run creates a new loop each time).
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aclient[0] is not loop:
            self._aclient = (
                loop,
                self._httpx.AsyncClient(
                    base_url=self.url, headers=self._headers, timeout=self._timeout
                ),
            )
        return self._aclient[1]

    def _delay(self, attempt: int, response: Any) -> float:
        after = response.headers.get("Retry-After") if response is not None else None
        if after:
            try:
                return min(float(after), _MAX_RETRY_AFTER_S)
            except ValueError:
                pass
        return self._backoff_s * (2**attempt)

    def _result(self, response: Any) -> Any:
        if response.status_code >= 400:
            try:
                err = response.json()["error"]
                kind, message = err.get("type", "error"), err.get("message", "")
            except Exception:
                kind, message = "error", response.text[:200]
            raise RemoteError(response.status_code, kind, message)
        return response.json()

    def _open_stream(self, path: str, body: dict[str, Any]) -> Any:
        """POST ``body`` and return the open streaming response (its status checked), with the
        same retries as :meth:`_post` before the first byte."""
        errors = (self._httpx.ConnectError, self._httpx.RemoteProtocolError)
        client = self.client
        for attempt in range(self._max_retries + 1):
            last = attempt == self._max_retries
            try:
                response = client.send(client.build_request("POST", path, json=body), stream=True)
            except errors as e:
                if last:
                    raise GLRetrievalError(f"cannot reach {self.url}: {e}") from e
                time.sleep(self._delay(attempt, None))
                continue
            if response.status_code < 400:
                return response
            response.read()
            response.close()
            if response.status_code in _RETRY_STATUSES and not last:
                time.sleep(self._delay(attempt, response))
                continue
            self._result(response)  # raises RemoteError
        raise GLRetrievalError(f"no answer from {self.url}")  # not reached

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        errors = (self._httpx.ConnectError, self._httpx.RemoteProtocolError)
        for attempt in range(self._max_retries + 1):
            last = attempt == self._max_retries
            try:
                response = self.client.post(path, json=body)
            except errors as e:
                if last:
                    raise GLRetrievalError(f"cannot reach {self.url}: {e}") from e
                time.sleep(self._delay(attempt, None))
                continue
            if response.status_code in _RETRY_STATUSES and not last:
                time.sleep(self._delay(attempt, response))
                continue
            return self._result(response)
        raise GLRetrievalError(f"no answer from {self.url}")  # not reached

    async def _apost(self, path: str, body: dict[str, Any]) -> Any:
        errors = (self._httpx.ConnectError, self._httpx.RemoteProtocolError)
        client = self._aclient_for_loop()
        for attempt in range(self._max_retries + 1):
            last = attempt == self._max_retries
            try:
                response = await client.post(path, json=body)
            except errors as e:
                if last:
                    raise GLRetrievalError(f"cannot reach {self.url}: {e}") from e
                await asyncio.sleep(self._delay(attempt, None))
                continue
            if response.status_code in _RETRY_STATUSES and not last:
                await asyncio.sleep(self._delay(attempt, response))
                continue
            return self._result(response)
        raise GLRetrievalError(f"no answer from {self.url}")  # not reached

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> RemotePipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the pipeline API ------------------------------------------------------------------------

    @staticmethod
    def _body(filters: Any, top_k: int | None, top_n: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if filters is not None:
            body["filters"] = _filters_json(filters)
        if top_k is not None:
            body["top_k"] = top_k
        if top_n is not None:
            body["top_n"] = top_n
        return body

    def retrieve(
        self,
        query: str,
        *,
        filters: Any = None,
        top_k: int | None = None,
        top_n: int | None = None,
    ) -> list[RankedNode]:
        """As :meth:`RetrievalPipeline.retrieve`, over ``POST /v1/query``."""
        data = self._post("/v1/query", {"query": query, **self._body(filters, top_k, top_n)})
        return [_node(r) for r in data["results"]]

    async def aretrieve(
        self,
        query: str,
        *,
        filters: Any = None,
        top_k: int | None = None,
        top_n: int | None = None,
    ) -> list[RankedNode]:
        """As :meth:`retrieve`, with an async client."""
        body = {"query": query, **self._body(filters, top_k, top_n)}
        data = await self._apost("/v1/query", body)
        return [_node(r) for r in data["results"]]

    def retrieve_batch(
        self,
        queries: Sequence[str],
        *,
        filters: Any = None,
        top_k: int | None = None,
        top_n: int | None = None,
    ) -> list[list[RankedNode]]:
        """As :meth:`RetrievalPipeline.retrieve_batch`, over ``POST /v1/query/batch``."""
        body = {"queries": list(queries), **self._body(filters, top_k, top_n)}
        data = self._post("/v1/query/batch", body)
        return [[_node(r) for r in item["results"]] for item in data["results"]]

    def as_retriever(
        self, *, filters: Any = None, top_k: int | None = None, top_n: int | None = None
    ) -> RemoteRetriever:
        """A LlamaIndex ``BaseRetriever`` over this server."""
        return RemoteRetriever(self, filters=filters, top_k=top_k, top_n=top_n)

    @overload
    def ask(
        self,
        question: str,
        *,
        filters: Any = ...,
        top_k: int | None = ...,
        top_n: int | None = ...,
        stream: Literal[False] = ...,
    ) -> Answer: ...

    @overload
    def ask(
        self,
        question: str,
        *,
        filters: Any = ...,
        top_k: int | None = ...,
        top_n: int | None = ...,
        stream: Literal[True],
    ) -> RemoteAnswerStream: ...

    def ask(
        self,
        question: str,
        *,
        filters: Any = None,
        top_k: int | None = None,
        top_n: int | None = None,
        stream: bool = False,
    ) -> Answer | RemoteAnswerStream:
        """As :meth:`RetrievalPipeline.ask`, over ``POST /v1/ask``.

        Args:
            question: The question.
            filters: Metadata filters, as for :meth:`retrieve`.
            top_k: Candidates to retrieve.
            top_n: Sources handed to the LLM.
            stream: True: a :class:`RemoteAnswerStream` that yields the text deltas as the
                server's LLM writes them, its ``sources`` filled once the answer is complete.

        Raises:
            RemoteError: The server refused (e.g. 400 ``llm_not_configured``), or an error
                came in the middle of the stream (status 200, e.g. ``llm_stalled``).

        Example:
            >>> with pipe.ask("what is BM25?", stream=True) as answer:  # doctest: +SKIP
            ...     for delta in answer:
            ...         print(delta, end="", flush=True)
            >>> [s.doc_id for s in answer.sources]  # doctest: +SKIP
        """
        body = {"question": question, **self._body(filters, top_k, top_n)}
        if not stream:
            data = self._post("/v1/ask", body)
            sources = [_node(s) for s in data["sources"]]
            return Answer(question=data["question"], answer=data["answer"], sources=sources)
        return RemoteAnswerStream(question, self._open_stream("/v1/ask", {**body, "stream": True}))

    def info(self) -> dict[str, Any]:
        """``GET /v1/info``."""
        return self._result(self.client.get("/v1/info"))


def sse_events(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """``(event, data)`` of each server-sent event in ``lines`` (``message`` when unnamed).

    Example:
        >>> list(sse_events(["event: token", 'data: {"text": "Hi"}', "", "data: [DONE]", ""]))
        [('token', '{"text": "Hi"}'), ('message', '[DONE]')]
    """
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield event, "\n".join(data)


class RemoteAnswerStream:
    """An answer streamed from ``POST /v1/ask``: iterate it for the text deltas.

    :attr:`sources` (``RankedNode``) and :attr:`answer` are complete once the iteration ends;
    :meth:`close` (or leaving a ``with`` block) hangs up, and the server stops generating.
    """

    def __init__(self, question: str, response: Any) -> None:
        self.question = question
        self.sources: list[RankedNode] = []
        self.done = False
        self._response = response
        self._parts: list[str] = []
        self._final: str | None = None
        self._deltas = self._read()

    def __iter__(self) -> Iterator[str]:
        return self._deltas  # one pass: a second loop continues where the first one stopped

    def _read(self) -> Iterator[str]:
        import httpx

        try:
            for event, data in sse_events(self._response.iter_lines()):
                if event == "token":
                    text = json.loads(data)["text"]
                    self._parts.append(text)
                    yield text
                elif event == "done":
                    final = json.loads(data)
                    self.sources = [_node(s) for s in final["sources"]]
                    self._final = final["answer"]
                    self.done = True
                    return
                elif event == "error":
                    err = json.loads(data).get("error", {})
                    raise RemoteError(
                        self._response.status_code,
                        err.get("type", "error"),
                        err.get("message", ""),
                    )
            if not self.done:
                raise GLRetrievalError("the answer stream ended before its `done` event")
        except httpx.HTTPError as e:
            raise GLRetrievalError(f"the answer stream broke off: {e}") from e
        finally:
            self.close()

    @property
    def answer(self) -> str:
        """The text so far; the whole answer once the stream is done."""
        return self._final if self._final is not None else "".join(self._parts)

    def to_answer(self) -> Answer:
        """The :class:`Answer` (reads what is left of the stream first)."""
        for _ in self:
            pass
        return Answer(question=self.question, answer=self.answer, sources=self.sources)

    def close(self) -> None:
        """Hang up; the server stops the generation."""
        self._response.close()

    def __enter__(self) -> RemoteAnswerStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteRetriever(BaseRetriever):
    """A LlamaIndex retriever whose results come from a ``gl-retrieval serve`` server."""

    def __init__(
        self,
        remote: RemotePipeline,
        *,
        filters: Any = None,
        top_k: int | None = None,
        top_n: int | None = None,
    ) -> None:
        super().__init__(callback_manager=CallbackManager([]))
        self._remote = remote
        self._opts = {"filters": filters, "top_k": top_k, "top_n": top_n}

    def _retrieve(self, query_bundle: QueryBundle) -> list[Any]:
        return list(self._remote.retrieve(query_bundle.query_str, **self._opts))

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[Any]:
        return list(await self._remote.aretrieve(query_bundle.query_str, **self._opts))
