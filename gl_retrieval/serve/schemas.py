"""Request bodies of the HTTP routes (responses are plain JSON in the CLI's shapes)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gl_retrieval.retrieval.queries import check_utf8

__all__ = [
    "AskRequest",
    "BatchQueryRequest",
    "ChatCompletionRequest",
    "ChatMessageIn",
    "EmbeddingsRequest",
    "IndexRequest",
    "QueryRequest",
    "TEIEmbedRequest",
    "TEIRerankRequest",
]

#: ``["ticker=PENDLE", "date<2026-01-01"]``, one such string, or ``{"ticker": "PENDLE"}``.
Filters = list[str] | dict[str, Any] | str | None


def _check_text(value: Any, path: str) -> None:
    """Refuse (ValueError, so 422) any string in a body that cannot be encoded as UTF-8: a lone
    surrogate such as ``"\\ud800"`` is valid JSON, but no model can read it (tokenizers raise
    ``TypeError``). ``path`` names the field, as ``input.3``."""
    if isinstance(value, str):
        check_utf8(value, path or "the body")
    elif isinstance(value, dict):
        for k, v in value.items():
            name = f"{path}.{k}" if path else str(k)
            check_utf8(str(k), f"a key of {path or 'the body'}")
            _check_text(v, name)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_text(v, f"{path}.{i}")


class _Text(BaseModel):
    """Every request body: each of its strings must be encodable as UTF-8 (else 422 naming
    the field), checked at the edge so that one bad text never reaches a merged batch."""

    @model_validator(mode="before")
    @classmethod
    def _utf8(cls, data: Any) -> Any:
        _check_text(data, "")
        return data


class _Body(_Text):
    model_config = ConfigDict(extra="forbid")


class _Options(_Body):
    top_k: int | None = Field(default=None, gt=0, description="Candidates to retrieve.")
    top_n: int | None = Field(default=None, gt=0, description="Results to return.")
    filters: Filters = Field(
        default=None,
        description="Metadata filters: strings like 'ticker=PENDLE' or a mapping "
        "{'ticker': 'PENDLE', 'date': {'<': '2026-01-01'}}.",
    )


class QueryRequest(_Options):
    query: str = Field(description="The query text.")


class BatchQueryRequest(_Options):
    queries: list[str] = Field(description="Query texts; results come back in this order.")


class AskRequest(_Options):
    question: str = Field(description="The question for the configured LLM.")
    stream: bool = Field(
        default=False,
        description="true: server-sent events, `token` events as the answer is written, then "
        "one `done` event with the `ask --json` shape.",
    )


class ChatMessageIn(_Text):
    """One message of OpenAI's chat schema: text content only."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = Field(
        default=None, description="The text, or a list of content parts ({type: text, text})."
    )


class ChatCompletionRequest(_Text):
    """OpenAI's ``POST /v1/chat/completions`` body, plus ``top_k``, ``top_n`` and ``filters``
    (the ``openai`` client sends them with ``extra_body``). Other OpenAI fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(
        default="gl-retrieval", description="Echoed back; the configured LLM answers."
    )
    messages: list[ChatMessageIn] = Field(
        description="The conversation; the last message is the user's question."
    )
    stream: bool = Field(default=False, description="true: OpenAI's chat.completion.chunk SSE.")
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(
        default=None, gt=0, description="OpenAI's newer name for max_tokens."
    )
    n: int = Field(default=1, ge=1, le=1, description="Only one choice is written.")
    top_k: int | None = Field(default=None, gt=0, description="Candidates to retrieve.")
    top_n: int | None = Field(default=None, gt=0, description="Sources handed to the LLM.")
    filters: Filters = Field(default=None, description="Metadata filters, as for /v1/query.")


class IndexRequest(_Body):
    prune: bool = Field(default=False, description="Remove documents gone from the sources.")


class EmbeddingsRequest(_Text):
    """OpenAI's ``POST /v1/embeddings`` body, plus ``input_type``."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str] = Field(description="One text or a list of texts.")
    model: str = Field(default="gl-retrieval", description="Echoed back; the served model.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, gt=0)
    user: str | None = None
    input_type: Literal["query", "document"] = Field(
        default="document",
        description="Which prefix applies: the embedder's document prefix (default, for texts "
        "you store) or its query prefix (for search queries).",
    )


class TEIEmbedRequest(_Text):
    """text-embeddings-inference's ``POST /embed`` body."""

    model_config = ConfigDict(extra="ignore")

    inputs: str | list[str]
    normalize: bool = True
    truncate: bool | None = None
    prompt_name: str | None = Field(
        default=None, description="'query' or 'document' applies that prefix; none: as given."
    )


class TEIRerankRequest(_Text):
    """text-embeddings-inference's ``POST /rerank`` body."""

    model_config = ConfigDict(extra="ignore")

    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None
