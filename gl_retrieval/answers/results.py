"""What ``ask`` hands back: an :class:`Answer`, or an :class:`AnswerStream` of its tokens."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from gl_retrieval.retrieval.results import RankedNode

__all__ = ["Answer", "AnswerStream"]


@dataclass(frozen=True)
class Answer:
    """An LLM's answer and the sources it was written from."""

    question: str
    answer: str
    sources: list[RankedNode]

    def to_dict(self) -> dict[str, Any]:
        """The ``ask --json`` shape."""
        return {
            "question": self.question,
            "answer": self.answer,
            "sources": [
                {k: v for k, v in s.to_dict().items() if k in ("id", "doc_id", "text", "score")}
                for s in self.sources
            ],
        }


class AnswerStream:
    """An answer as it is written: iterate it for the text deltas; the sources are known first.

    Iterating runs the LLM's stream in the caller's thread; :meth:`close` (or leaving a ``with``
    block) stops it, so a client that goes away stops the generation. After the iteration,
    :attr:`answer` holds the whole text and :meth:`to_answer` the :class:`Answer`.

    Example:
        >>> stream = AnswerStream("why?", [], iter(["Because", "."]))
        >>> "".join(stream), stream.answer, stream.done
        ('Because.', 'Because.', True)
    """

    def __init__(
        self,
        question: str,
        sources: list[RankedNode],
        tokens: Iterator[str],
        *,
        errors: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        self.question = question
        self.sources = sources
        self._tokens = tokens
        self._errors = errors
        self._parts: list[str] = []
        self._lock = threading.Lock()
        self.done = False

    def __iter__(self) -> Iterator[str]:
        with self._errors():
            for token in self._tokens:
                if not token:
                    continue
                self._parts.append(token)
                yield token
        self.done = True

    @property
    def answer(self) -> str:
        """The text streamed so far (all of it once iteration ended)."""
        return "".join(self._parts).strip() if self.done else "".join(self._parts)

    def close(self) -> None:
        """Stop the LLM's stream (nothing more is generated)."""
        with self._lock:
            close = getattr(self._tokens, "close", None)  # a generator; a plain iterator has none
            if close is not None:
                close()

    def __enter__(self) -> AnswerStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def to_answer(self) -> Answer:
        """The :class:`Answer` (iterates what is left first)."""
        for _ in self:
            pass
        return Answer(question=self.question, answer=self.answer, sources=self.sources)
