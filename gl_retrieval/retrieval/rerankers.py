"""Cross-encoder second stage: reorder the retrieved candidates, keep the top n.

A thin LlamaIndex postprocessor over sentence-transformers' ``CrossEncoder`` rather than
``SentenceTransformerRerank`` from llama-index-postprocessor-sbert-rerank, because that one
overwrites ``node.score`` in place (losing the retrieval score, and mutating the caller's
objects) and loads its model in ``__init__``. This one returns new :class:`RankedNode` objects.

A **stand-in** model (``packaged:stand-in-cross-encoder``, or any directory that
:func:`~.stand_in.make_tiny_cross_encoder` marked) has random weights: it is scored
(the loading and scoring path runs), but the results keep their retrieval order and score and
say so (``rerank_stand_in=True``), rather than being sorted by noise and called "reranked".

``backend: onnx`` / ``openvino`` score with a cached export of the same model instead
(:mod:`gl_retrieval.models.exports`), torch-free: the same tokenizer, the same pair truncation
(``longest_first`` to ``max_length``) and the same activation as ``CrossEncoder.predict``. Every
backend sorts the pairs by length before batching (less padding) and warns once per model when
a pair is longer than ``max_length`` and gets cut.

Every score goes through the **rerank cache** (:mod:`.score_cache`, sized by
``reranker.cache_mb`` / ``cache_entries``): :meth:`CrossEncoderReranker.score_pairs` looks the
pairs up first and runs the model only on those missing, so a repeated query skips the
cross-encoder. Its key is the scorer's identity (what its loader loaded, and at what
precision), the query and the passage's exact text.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from gl_retrieval._deps import require
from gl_retrieval.config import RerankerConfig
from gl_retrieval.errors import ModelLoadError, QueryError, RerankError
from gl_retrieval.models import (
    STAND_IN_RERANKER,
    apply_quiet,
    model_load_error,
    quiet_model_loads,
    resolve_model_path,
)
from gl_retrieval.models.backend_choice import BackendChoice, resolve_backend
from gl_retrieval.models.devices import resolve_device
from gl_retrieval.models.parity import ParityVerdict
from gl_retrieval.retrieval.results import RankedNode
from gl_retrieval.retrieval.score_cache import CacheStats, ScoreCache, ScoreLookup, entries_for

__all__ = ["CrossEncoderReranker", "PairScorer", "Scorer", "build_reranker"]

log = logging.getLogger("gl_retrieval")

#: ``(query, passages) -> scores``: what a reranker needs from a model (tests inject fakes).
Scorer = Callable[[str, Sequence[str]], Sequence[float]]


class PairScorer:
    """What the reranker asks of a model, declared: scores for ``(query, passage)`` pairs of
    any number of queries in one call, and the tokens each pair takes.

    The cross-encoder loaders build one with the model's own batch scoring and tokenizer;
    :meth:`from_function` wraps any ``(query, passages) -> scores`` function (a fake in tests,
    a scoring service), grouping pairs by query and estimating four characters a token.

    ``identity`` says what computes the scores: the loaders write the resolved model path,
    revision, backend, precision, device and ``max_length`` into it; the rerank cache keys
    scores by it. Default: unique to this object.

    Example:
        >>> s = PairScorer.from_function(lambda q, ps: [float(len(p)) for p in ps])
        >>> s.predict_pairs([("q", "ab"), ("r", "abc")]), s("q", ["a"])
        ([2.0, 3.0], [1.0])
    """

    def __init__(
        self,
        predict_pairs: Callable[[list[tuple[str, str]]], Sequence[float]],
        count_tokens: Callable[[Sequence[tuple[str, str]]], list[int]] | None = None,
        *,
        max_length: int | None = None,
        identity: str | None = None,
    ) -> None:
        self._predict = predict_pairs
        self._count = count_tokens
        self._cap = max_length or 10**9
        self.identity = identity or f"scorer:{id(self)}"

    @classmethod
    def from_function(cls, fn: Scorer, *, max_length: int | None = None) -> PairScorer:
        """Wrap a one-query-at-a-time ``(query, passages) -> scores`` function."""

        def predict(pairs: list[tuple[str, str]]) -> list[float]:
            out: list[float] = [0.0] * len(pairs)
            groups: dict[str, list[int]] = {}
            for i, (q, _) in enumerate(pairs):
                groups.setdefault(q, []).append(i)
            for q, idx in groups.items():
                scores = list(fn(q, [pairs[i][1] for i in idx]))
                for i, s in zip(idx, scores, strict=True):
                    out[i] = float(s)
            return out

        return cls(predict, max_length=max_length)

    def __call__(self, query: str, passages: Sequence[str]) -> list[float]:
        return self.predict_pairs([(query, p) for p in passages])

    def predict_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Scores of ``pairs``, in their order.

        Raises:
            RerankError: the model gave a NaN or infinite score. No surface may carry one (JSON
                cannot, and it would sort anywhere), and none reaches the rerank cache.
        """
        if not pairs:
            return []
        scores = [float(s) for s in self._predict(list(pairs))]
        bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
        if bad:
            query, passage = pairs[bad[0]]
            raise RerankError(
                f"the reranker gave non-finite scores to {len(bad)} of {len(pairs)} pairs "
                f"(first: {scores[bad[0]]} for query {query[:60]!r} and a passage of "
                f"{len(passage)} characters): its weights or its runtime are broken (check "
                "the model files; on a GPU, try `device: cpu` to rule out an fp16 overflow)"
            )
        return scores

    def count_tokens(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        """Tokens each pair takes in the model (capped at ``max_length``); an estimate of four
        characters a token when there is no tokenizer."""
        if self._count is None or not pairs:
            return [min(self._cap, (len(q) + len(p)) // 4 + 3) for q, p in pairs]
        return self._count(pairs)


class CrossEncoderReranker(BaseNodePostprocessor):
    """Rerank nodes with a cross-encoder; keeps retrieval and rerank scores.

    Example:
        >>> rr = CrossEncoderReranker(model="BAAI/bge-reranker-base", top_n=5)
        >>> top = rr.postprocess_nodes(hits, query_str="what is BM25?")  # doctest: +SKIP
    """

    model: str = Field(description="Hub id or local path of a cross-encoder.")
    top_n: int = Field(default=5, gt=0)
    device: str = "auto"
    batch_size: int = Field(default=32, gt=0)
    max_length: int | None = 512
    revision: str | None = None
    backend: str = "torch"
    quantization: str = "auto"
    threads: int | None = None
    cache_mb: float = Field(default=16.0, ge=0, description="Rerank cache size; 0: off.")
    cache_entries: int | None = Field(default=None, ge=0, description="Cap on cached scores.")
    first_stage_weight: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Blend with the first stage's score (0: off)."
    )

    _scorer: PairScorer | None = PrivateAttr(default=None)
    _stand_in: bool | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _cache: ScoreCache = PrivateAttr(default_factory=lambda: ScoreCache(max_entries=0))

    def __init__(self, *, scorer: Scorer | None = None, **data: Any) -> None:
        super().__init__(**data)
        self._cache = ScoreCache(
            max_entries=entries_for(max_mb=self.cache_mb, max_entries=self.cache_entries)
        )
        self._scorer = None
        if scorer is not None:
            self._scorer = (
                scorer
                if isinstance(scorer, PairScorer)
                else PairScorer.from_function(scorer, max_length=self.max_length)
            )
            self._stand_in = False  # an injected scorer is taken at its word

    @classmethod
    def class_name(cls) -> str:
        return "GLCrossEncoderReranker"

    @property
    def scorer(self) -> PairScorer:
        """The scoring function (loads the model on first access)."""
        if self._scorer is None:
            with self._lock:
                if self._scorer is None:
                    self._scorer = _shared_scorer(self.model, **self._settings())
        return self._scorer

    def _settings(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "revision": self.revision,
            "backend": self.backend,
            "quantization": self.quantization,
            "threads": self.threads,
        }

    @property
    def backend_choice(self) -> BackendChoice:
        """What runs the model, and why: ``backend: auto`` resolved on this machine (with its
        parity verdict once the model is loaded), or the configured backend. Loads nothing."""
        loaded = _choices.get(_scorer_key(self.model, self._settings()))
        if loaded is not None:
            return loaded
        return resolve_backend(
            "reranker", backend=self.backend, quantization=self.quantization, device=self.device
        )

    @property
    def stand_in(self) -> bool:
        """True when the model is a stand-in with meaningless scores (no model is loaded).

        ``packaged:stand-in-cross-encoder``, or a directory marked by
        :func:`~.stand_in.make_tiny_cross_encoder`. An injected ``scorer`` is taken
        at its word (never a stand-in).
        """
        if self._stand_in is None:
            from gl_retrieval.models.stand_in import is_stand_in

            self._stand_in = self.model == STAND_IN_RERANKER or is_stand_in(self.model)
        return self._stand_in

    def warmup(self) -> None:
        """Load the model and score one pair."""
        self.scorer("warmup", ["warmup"])

    def rerank(
        self, nodes: Sequence[NodeWithScore], query: str, *, top_n: int | None = None
    ) -> list[RankedNode]:
        """Score ``nodes`` against ``query``; return new nodes, best first, cut to ``top_n``.

        With a :attr:`stand_in` model the nodes are scored but keep their retrieval order and
        ``score``; ``rerank_score`` holds the stand-in's number and ``rerank_stand_in`` is True.

        Args:
            nodes: Retrieved candidates (not modified).
            query: The query text.
            top_n: How many to keep; default: the configured ``top_n``.
        """
        if not nodes:
            return []
        scores = self.score_pairs([(query, p) for p in self.passages(nodes)])
        return self.rank(nodes, scores, top_n=top_n)

    @staticmethod
    def passages(nodes: Sequence[NodeWithScore]) -> list[str]:
        """The text the cross-encoder reads for each node (content with embed metadata)."""
        return [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, cache: bool = True) -> list[float]:
        """Score ``(query, passage)`` pairs of any number of queries in one model call.

        The rerank cache is looked up first (:meth:`lookup`); only the pairs it lacks go to
        the model (:meth:`score_missing`), so a repeated query does not run the model at all.
        With a custom ``scorer`` (which takes one query at a time) the pairs are grouped by
        query; scores come back in the order of ``pairs`` either way.

        Args:
            pairs: ``(query, passage)`` pairs.
            cache: False: every pair goes to the model, and the cache is neither read nor
                written (what ``eval`` times: the cross-encoder's own cost).
        """
        if not cache:
            return self.scorer.predict_pairs(pairs)
        found = self.lookup(pairs)
        return found.complete(self.score_missing(found.missing))

    def lookup(self, pairs: Sequence[tuple[str, str]]) -> ScoreLookup:
        """The scores the rerank cache holds for ``pairs`` (counted as hits and misses), and
        the pairs still to score, each distinct one once. Runs no model (it loads one, on
        first use, to know its identity)."""
        cache = self._cache
        if not pairs or not cache.enabled:
            return ScoreLookup.nothing_found(pairs)
        keys = cache.keys(self.scorer.identity, pairs)
        return ScoreLookup.of(pairs, keys, cache.get_many(keys))

    def score_missing(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Score ``pairs`` with the model, each distinct pair once, and keep the scores in the
        rerank cache; no lookup. :meth:`score_pairs` runs it on what :meth:`lookup` did not
        find; ``serve``'s rerank batcher on the misses of many requests merged."""
        if not pairs:
            return []
        cache = self._cache
        if not cache.enabled:
            return self.scorer.predict_pairs(pairs)
        keys = cache.keys(self.scorer.identity, pairs)
        first: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        unique = list(first.values())
        scores = self.scorer.predict_pairs([pairs[i] for i in unique])
        cache.put_many(list(first), scores)
        by_key = dict(zip(first, scores, strict=True))
        return [by_key[k] for k in keys]

    def cache_stats(self) -> CacheStats:
        """The rerank cache's hits, misses, evictions and size (``enabled`` False when
        ``cache_mb`` or ``cache_entries`` is 0).

        Example:
            >>> rr = CrossEncoderReranker(model="m", scorer=lambda q, ps: [1.0] * len(ps))
            >>> _ = rr.score_pairs([("q", "a")]), rr.score_pairs([("q", "a")])
            >>> s = rr.cache_stats(); (s.hits, s.misses, s.entries)
            (1, 1, 1)
        """
        return self._cache.stats()

    def count_pair_tokens(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        """Tokens each pair takes in the model (capped at ``max_length``); an estimate of four
        characters a token when the scorer has no tokenizer (a custom ``scorer``)."""
        return self.scorer.count_tokens(pairs)

    def rank(
        self,
        nodes: Sequence[NodeWithScore],
        scores: Sequence[float],
        *,
        top_n: int | None = None,
    ) -> list[RankedNode]:
        """New nodes carrying ``scores`` (one per node), best first, cut to ``top_n``.

        With ``first_stage_weight`` w > 0 they are ordered by the blend
        ``(1 - w) * norm(score) + w * norm(retrieval score)`` (min-max over these nodes), which
        becomes ``score``; ``rerank_score`` stays the model's.
        """
        scores = [float(s) for s in scores]
        if len(scores) != len(nodes):
            raise ModelLoadError(f"reranker returned {len(scores)} scores for {len(nodes)} nodes")
        stand_in = self.stand_in
        firsts = [n.retrieval_score if isinstance(n, RankedNode) else n.score for n in nodes]
        final = scores
        if self.first_stage_weight > 0 and not stand_in:
            final = _blend(scores, [f or 0.0 for f in firsts], self.first_stage_weight)
        ranked = []
        for n, s, retrieval, f in zip(nodes, scores, firsts, final, strict=True):
            ranked.append(
                RankedNode(
                    node=n.node,
                    score=retrieval if stand_in else f,
                    retrieval_score=retrieval,
                    rerank_score=s,
                    retrieval_kind=n.retrieval_kind if isinstance(n, RankedNode) else None,
                    rerank_stand_in=stand_in,
                )
            )
        if not stand_in:
            # Stable sort: equal scores keep their retrieval order.
            ranked.sort(key=lambda r: -(r.score or 0.0))
        return ranked[: self.top_n if top_n is None else top_n]

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise QueryError("a reranker needs the query: pass query_bundle or query_str")
        return list(self.rerank(nodes, query_bundle.query_str))


def _blend(rerank: Sequence[float], first: Sequence[float], weight: float) -> list[float]:
    """``(1 - weight) * minmax(rerank) + weight * minmax(first)``; a constant list counts 0."""

    def norm(xs: Sequence[float]) -> list[float]:
        lo, hi = min(xs), max(xs)
        return [(x - lo) / (hi - lo) if hi > lo else 0.0 for x in xs]

    r, f = norm(rerank), norm(first)
    return [(1.0 - weight) * a + weight * b for a, b in zip(r, f, strict=True)]


_scorers: dict[tuple[Any, ...], PairScorer] = {}
_scorers_lock = threading.Lock()


_choices: dict[tuple[Any, ...], BackendChoice] = {}


def _scorer_key(model: str, settings: dict[str, Any]) -> tuple[Any, ...]:
    return (model, *sorted(settings.items()))


def _shared_scorer(model: str, **settings: Any) -> PairScorer:
    """Load a cross-encoder once per process and settings; every reranker using it shares it.
    ``backend: auto`` is resolved here, once (:func:`_auto_scorer`)."""
    key = _scorer_key(model, settings)
    with _scorers_lock:
        if key not in _scorers:
            if settings["backend"] == "auto":
                _choices[key], _scorers[key] = _auto_scorer(model, **settings)
            elif settings["backend"] == "torch":
                settings.pop("backend")
                settings.pop("quantization")
                _scorers[key] = _load_cross_encoder(model, **settings)
            else:
                settings.pop("device")
                _scorers[key] = _load_exported_cross_encoder(model, **settings)
        return _scorers[key]


def _auto_scorer(model: str, **settings: Any) -> tuple[BackendChoice, PairScorer]:
    """``backend: auto``: the table's choice for this CPU (:mod:`~gl_retrieval.models.
    backend_choice`), a quantized export kept only if it scores the fixed pairs
    (:func:`~gl_retrieval.models.parity.parity_pairs`) like fp32 torch (the verdict is cached
    beside the export), else the next candidate."""
    from gl_retrieval.models.exports import ExportSpec, ensure_export
    from gl_retrieval.models.parity import (
        judge_scores,
        parity_pairs,
        read_verdict,
        settle,
        write_verdict,
    )
    from gl_retrieval.models.stand_in import is_stand_in

    device, quant = settings.pop("device"), settings.pop("quantization")
    settings.pop("backend")
    choice = resolve_backend("reranker", backend="auto", quantization=quant, device=device)
    built: dict[tuple[str, str], PairScorer] = {}
    reference: list[float] = []

    def check(c: BackendChoice) -> ParityVerdict:
        spec = ExportSpec(
            model=model,
            kind="reranker",
            backend=c.backend,  # type: ignore[arg-type]
            quantization=c.quantization,  # type: ignore[arg-type]
            revision=settings["revision"],
        )
        export = ensure_export(spec, log=log.info)
        verdict = read_verdict(export, c.precision)
        if verdict is not None:
            return verdict
        scorer = built[c.backend, c.quantization] = _load_exported_cross_encoder(
            model, backend=c.backend, quantization=c.quantization, **settings
        )
        if model == STAND_IN_RERANKER or is_stand_in(model):
            verdict = ParityVerdict(
                "reranker", c.backend, c.precision, 0, ok=True, checked=False,
                note="not judged: a stand-in model has random weights",
            )  # fmt: skip
        else:
            pairs = parity_pairs()
            if not reference:  # fp32 torch on the CPU, once
                torch_scorer = _load_cross_encoder(model, device="cpu", **settings)
                reference.extend(torch_scorer.predict_pairs(pairs))
            got = scorer.predict_pairs(pairs)
            verdict = judge_scores(reference, got, backend=c.backend, precision=c.precision)
        write_verdict(export, verdict)
        return verdict

    choice = settle(choice, check=check)
    if choice.backend == "torch":
        return choice, _load_cross_encoder(model, device=device, **settings)
    scorer = built.get((choice.backend, choice.quantization))
    if scorer is None:
        scorer = _load_exported_cross_encoder(
            model, backend=choice.backend, quantization=choice.quantization, **settings
        )
    return choice, scorer


class _TruncationNotice:
    """Warns once per model when pairs are longer than ``max_length`` and get cut."""

    def __init__(self, model: str, max_length: int | None) -> None:
        self._model, self._max, self._done = model, max_length, False

    def check(self, lengths: Sequence[int]) -> None:
        if self._done or self._max is None:
            return
        over = sum(1 for n in lengths if n > self._max)
        if over:
            self._done = True
            log.warning(
                "reranker %s: %d of %d query+passage pairs are longer than max_length=%d tokens "
                "and were truncated (longest %d); raise reranker.max_length or use shorter "
                "chunks (warned once)",
                self._model,
                over,
                len(lengths),
                self._max,
                max(lengths),
            )


def _load_cross_encoder(
    model: str,
    *,
    device: str,
    batch_size: int,
    max_length: int | None,
    revision: str | None,
    threads: int | None = None,
) -> PairScorer:
    st = require("sentence_transformers", package="sentence-transformers")
    apply_quiet()
    if threads is not None:
        from gl_retrieval.models.runtimes import apply_torch_threads

        apply_torch_threads(threads)
    dev = resolve_device(device)
    path = resolve_model_path(model, revision=revision, role="reranker")
    try:
        with quiet_model_loads():  # no "Loading weights" bar in scripts and notebooks
            ce = st.CrossEncoder(
                path,
                device=dev,
                revision=revision,
                trust_remote_code=False,
            )
    except (OSError, ValueError, RuntimeError) as e:
        raise model_load_error(model, e, role="reranker") from e
    num_labels = getattr(ce.config, "num_labels", 1)
    if num_labels != 1:
        raise ModelLoadError(
            f"reranker model {model!r} has {num_labels} output labels; a cross-encoder "
            "reranker needs exactly 1 (a relevance score)"
        )
    if dev == "cuda":
        ce.model.half()
    # One meaning of max_length on every backend (the exports cap it the same way): at most the
    # model's own limit, its tokenizer's model_max_length. A cross-encoder fine-tuned at 128
    # tokens keeps 128: positions past it were never trained (reranked nDCG@10 0.41 at 512
    # against 0.64 at 128 on SciFact, docs/performance.md).
    model_max = int(ce.max_seq_length or ce.tokenizer.model_max_length)  # loaded without a cap
    if model_max > 100_000:  # transformers' "no limit" sentinel
        model_max = int(getattr(ce.config, "max_position_embeddings", 512))
    max_length = min(max_length or model_max, model_max)
    if ce.max_seq_length != max_length:
        ce.max_seq_length = max_length
    notice = _TruncationNotice(model, max_length)

    # A fast tokenizer is not safe to call from two threads at once (its truncation state is
    # shared), so pairs are measured with a copy of it, under a lock of its own.
    counting = copy.deepcopy(ce.tokenizer)
    counting_lock = threading.Lock()

    def predict_pairs(pairs: list[tuple[str, str]]) -> Sequence[float]:
        with counting_lock:
            enc = counting([q for q, _ in pairs], [p for _, p in pairs], verbose=False)
        notice.check([len(ids) for ids in enc["input_ids"]])
        # CrossEncoder.predict sorts the pairs by length itself before batching.
        return ce.predict(pairs, batch_size=batch_size, show_progress_bar=False)

    def count_tokens(pairs: Sequence[tuple[str, str]]) -> list[int]:
        with counting_lock:
            enc = counting(
                [q for q, _ in pairs],
                [p for _, p in pairs],
                truncation=True,
                max_length=max_length or counting.model_max_length,
            )
        return [len(ids) for ids in enc["input_ids"]]

    identity = (
        f"torch|{path}|revision={revision}|device={dev}|"
        f"{'fp16' if dev == 'cuda' else 'fp32'}|max_length={max_length}"
    )
    return PairScorer(predict_pairs, count_tokens, max_length=max_length, identity=identity)


def _load_exported_cross_encoder(
    model: str,
    *,
    batch_size: int,
    max_length: int | None,
    revision: str | None,
    backend: str,
    quantization: str,
    threads: int | None,
) -> PairScorer:
    from gl_retrieval.models.exports import ExportSpec, ensure_export, model_file, read_meta
    from gl_retrieval.models.runtimes import FastTokenizer, load_runner, resolve_threads

    spec = ExportSpec(
        model=model,
        kind="reranker",
        backend=backend,  # type: ignore[arg-type]
        quantization=quantization,  # type: ignore[arg-type]
        revision=revision,
    )
    export = ensure_export(spec, log=log.info)
    meta = read_meta(export)
    if meta["num_labels"] != 1:
        raise ModelLoadError(
            f"reranker model {model!r} has {meta['num_labels']} output labels; a cross-encoder "
            "reranker needs exactly 1 (a relevance score)"
        )
    tok = FastTokenizer(
        export / "tokenizer.json", pad_id=meta["pad_id"], input_names=meta["input_names"]
    )
    run = load_runner(
        backend, model_file(export), threads=resolve_threads(threads), quantization=quantization
    )
    limit = min(max_length or meta["model_max_length"], meta["model_max_length"])
    notice = _TruncationNotice(model, limit)
    sigmoid = meta["activation"] == "sigmoid"

    def predict_pairs(pairs: list[tuple[str, str]]) -> Sequence[float]:
        encs, cut = tok.encode(pairs, max_length=limit)
        if any(cut):
            notice.check([limit + 1 if c else len(e.ids) for e, c in zip(encs, cut, strict=True)])
        order = np.argsort([-len(e.ids) for e in encs], kind="stable")
        out = np.zeros(len(encs), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            logits = run(tok.feeds([encs[i] for i in idx])).astype(np.float32).reshape(len(idx))
            out[idx] = logits
        return 1.0 / (1.0 + np.exp(-out)) if sigmoid else out

    def count_tokens(pairs: Sequence[tuple[str, str]]) -> list[int]:
        encs, _ = tok.encode(list(pairs), max_length=limit)
        return [len(e.ids) for e in encs]

    # The export's directory name holds the model's content hash, revision, backend, weights
    # and runtime versions; ``quantization`` adds the runtime's precision hint (auto: bf16 on
    # OpenVINO where the CPU has it).
    identity = f"{backend}|{export}|quantization={quantization}|max_length={limit}"
    return PairScorer(predict_pairs, count_tokens, max_length=limit, identity=identity)


def build_reranker(
    cfg: RerankerConfig, *, scorer: Scorer | None = None, threads: int | str | None = None
) -> CrossEncoderReranker:
    """A reranker for ``cfg``: cheap to build; the model loads once per process on first use.

    Args:
        cfg: The ``reranker`` config section.
        scorer: Replace the cross-encoder with any ``(query, passages) -> scores`` function.
        threads: ``runtime.threads`` (an int, or ``auto``/None for the default).
    """
    from gl_retrieval.models.runtimes import resolve_threads

    return CrossEncoderReranker(scorer=scorer, threads=resolve_threads(threads), **cfg.model_dump())
