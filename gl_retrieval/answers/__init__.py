"""Answers: an LLM writes from the two stages' results, the LlamaIndex way.

Takes the pipeline's two-stage retriever and an LLM (from the config's ``llm`` section, or any
LlamaIndex ``LLM`` passed in); hands on LlamaIndex's own query and chat engines
(:mod:`.engines`), and ``ask``'s :class:`Answer` / :class:`AnswerStream` (:mod:`.results`).
Without an LLM, the query engine is retrieval-only and no model is ever called.
"""

from __future__ import annotations

from gl_retrieval.answers.engines import (
    CHAT_MODES,
    SourcesOnlySynthesizer,
    build_chat_engine,
    build_query_engine,
)
from gl_retrieval.answers.results import Answer, AnswerStream

__all__ = [
    "CHAT_MODES",
    "Answer",
    "AnswerStream",
    "SourcesOnlySynthesizer",
    "build_chat_engine",
    "build_query_engine",
]
