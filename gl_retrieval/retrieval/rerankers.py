"""Cross-encoder second stage: reorder the retrieved candidates, keep the top n.

A thin LlamaIndex postprocessor over sentence-transformers' ``CrossEncoder`` rather than
``SentenceTransformerRerank`` from llama-index-postprocessor-sbert-rerank, because that one
overwrites ``node.score`` in place (losing the retrieval score, and mutating the caller's
objects) and loads its model in ``__init__``. This one returns new :class:`RankedNode` objects.

A **stand-in** model (``packaged:stand-in-cross-encoder``, or any directory that
:func:`gl_retrieval.testing.make_tiny_cross_encoder` marked) has random weights: it is scored
(the loading and scoring path runs), but the results keep their retrieval order and score and
say so (``rerank_stand_in=True``), rather than being sorted by noise and called "reranked".
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from gl_retrieval._deps import require
from gl_retrieval.config import RerankerConfig
from gl_retrieval.devices import resolve_device
from gl_retrieval.errors import ModelLoadError
from gl_retrieval.models import (
    STAND_IN_RERANKER,
    model_load_error,
    quiet_model_loads,
    resolve_model_path,
)
from gl_retrieval.retrieval.results import RankedNode

__all__ = ["CrossEncoderReranker", "Scorer", "build_reranker"]

#: ``(query, passages) -> scores``: what a reranker needs from a model (tests inject fakes).
Scorer = Callable[[str, Sequence[str]], Sequence[float]]


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

    _scorer: Scorer | None = PrivateAttr(default=None)
    _stand_in: bool | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, *, scorer: Scorer | None = None, **data: Any) -> None:
        super().__init__(**data)
        self._scorer = scorer
        if scorer is not None:
            self._stand_in = False  # an injected scorer is taken at its word

    @classmethod
    def class_name(cls) -> str:
        return "GLCrossEncoderReranker"

    @property
    def scorer(self) -> Scorer:
        """The scoring function (loads the model on first access)."""
        if self._scorer is None:
            with self._lock:
                if self._scorer is None:
                    self._scorer = _shared_scorer(
                        self.model,
                        device=self.device,
                        batch_size=self.batch_size,
                        max_length=self.max_length,
                        revision=self.revision,
                    )
        return self._scorer

    @property
    def stand_in(self) -> bool:
        """True when the model is a stand-in with meaningless scores (no model is loaded).

        ``packaged:stand-in-cross-encoder``, or a directory marked by
        :func:`gl_retrieval.testing.make_tiny_cross_encoder`. An injected ``scorer`` is taken
        at its word (never a stand-in).
        """
        if self._stand_in is None:
            from gl_retrieval.testing import is_stand_in

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
        scores = self.scorer(query, self.passages(nodes))
        return self.rank(nodes, scores, top_n=top_n)

    @staticmethod
    def passages(nodes: Sequence[NodeWithScore]) -> list[str]:
        """The text the cross-encoder reads for each node (content with embed metadata)."""
        return [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Score ``(query, passage)`` pairs of any number of queries in one model call.

        With a custom ``scorer`` (which takes one query at a time) the pairs are grouped by
        query; scores come back in the order of ``pairs`` either way.
        """
        if not pairs:
            return []
        scorer = self.scorer
        predict = getattr(scorer, "predict_pairs", None)
        if predict is not None:
            return [float(s) for s in predict(list(pairs))]
        out: list[float] = [0.0] * len(pairs)
        groups: dict[str, list[int]] = {}
        for i, (q, _) in enumerate(pairs):
            groups.setdefault(q, []).append(i)
        for q, idx in groups.items():
            scores = list(scorer(q, [pairs[i][1] for i in idx]))
            for i, s in zip(idx, scores, strict=True):
                out[i] = float(s)
        return out

    def count_pair_tokens(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        """Tokens each pair takes in the model (capped at ``max_length``); an estimate of four
        characters a token when the scorer has no tokenizer (a custom ``scorer``)."""
        cap = self.max_length or 10**9
        counter = getattr(self.scorer, "count_tokens", None)
        if counter is None or not pairs:
            return [min(cap, (len(q) + len(p)) // 4 + 3) for q, p in pairs]
        return counter(pairs)

    def rank(
        self,
        nodes: Sequence[NodeWithScore],
        scores: Sequence[float],
        *,
        top_n: int | None = None,
    ) -> list[RankedNode]:
        """New nodes carrying ``scores`` (one per node), best first, cut to ``top_n``."""
        scores = [float(s) for s in scores]
        if len(scores) != len(nodes):
            raise ModelLoadError(f"reranker returned {len(scores)} scores for {len(nodes)} nodes")
        stand_in = self.stand_in
        ranked = []
        for n, s in zip(nodes, scores, strict=True):
            retrieval = n.retrieval_score if isinstance(n, RankedNode) else n.score
            ranked.append(
                RankedNode(
                    node=n.node,
                    score=retrieval if stand_in else s,
                    retrieval_score=retrieval,
                    rerank_score=s,
                    retrieval_kind=n.retrieval_kind if isinstance(n, RankedNode) else None,
                    rerank_stand_in=stand_in,
                )
            )
        if not stand_in:
            # Stable sort: equal rerank scores keep their retrieval order.
            ranked.sort(key=lambda r: -(r.rerank_score or 0.0))
        return ranked[: self.top_n if top_n is None else top_n]

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("a reranker needs the query: pass query_bundle or query_str")
        return list(self.rerank(nodes, query_bundle.query_str))


_scorers: dict[tuple[Any, ...], Scorer] = {}
_scorers_lock = threading.Lock()


def _shared_scorer(
    model: str, *, device: str, batch_size: int, max_length: int | None, revision: str | None
) -> Scorer:
    """Load a CrossEncoder once per process and settings; every reranker using it shares it."""
    key = (model, device, batch_size, max_length, revision)
    with _scorers_lock:
        if key not in _scorers:
            _scorers[key] = _load_cross_encoder(
                model,
                device=device,
                batch_size=batch_size,
                max_length=max_length,
                revision=revision,
            )
        return _scorers[key]


def _load_cross_encoder(
    model: str, *, device: str, batch_size: int, max_length: int | None, revision: str | None
) -> Scorer:
    st = require("sentence_transformers", package="sentence-transformers")
    dev = resolve_device(device)
    path = resolve_model_path(model, revision=revision, role="reranker")
    try:
        with quiet_model_loads():  # no "Loading weights" bar in scripts and notebooks
            ce = st.CrossEncoder(
                path,
                device=dev,
                max_length=max_length,
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

    def predict_pairs(pairs: list[tuple[str, str]]) -> Sequence[float]:
        return ce.predict(pairs, batch_size=batch_size, show_progress_bar=False)

    def score(query: str, passages: Sequence[str]) -> Sequence[float]:
        return predict_pairs([(query, p) for p in passages])

    # A fast tokenizer is not safe to call from two threads at once (its truncation state is
    # shared), so pairs are measured with a copy of it, under a lock of its own.
    counting = copy.deepcopy(ce.tokenizer)
    counting_lock = threading.Lock()

    def count_tokens(pairs: Sequence[tuple[str, str]]) -> list[int]:
        with counting_lock:
            enc = counting(
                [q for q, _ in pairs],
                [p for _, p in pairs],
                truncation=True,
                max_length=max_length or counting.model_max_length,
            )
        return [len(ids) for ids in enc["input_ids"]]

    # What the serve batcher uses: score many queries' pairs at once, and measure them.
    score.predict_pairs = predict_pairs  # type: ignore[attr-defined]
    score.count_tokens = count_tokens  # type: ignore[attr-defined]
    return score


def build_reranker(cfg: RerankerConfig, *, scorer: Scorer | None = None) -> CrossEncoderReranker:
    """A reranker for ``cfg``: cheap to build; the model loads once per process on first use.

    Args:
        cfg: The ``reranker`` config section.
        scorer: Replace the cross-encoder with any ``(query, passages) -> scores`` function.
    """
    return CrossEncoderReranker(scorer=scorer, **cfg.model_dump())
