"""Evaluate a configured pipeline on a BEIR-layout dataset: the library behind `gl-retrieval eval`.

:func:`evaluate_pipeline` indexes the dataset's ``corpus.jsonl`` with the config's embedder and
storage (incrementally: a stored index that already holds the corpus embeds nothing, so several
retriever modes share one embedding pass), runs every judged query through the first stage
(and the reranker, when configured), and scores documents at their best chunk's rank.

* Depth: every run retrieves ``max(100, retriever.top_k)`` chunks, so ``Recall@100`` means
  something even when the config says ``top_k: 20``; the reranker (if any) reorders all of them.
* Gains: trec_eval semantics; ``gains="auto"`` applies a dataset's documented preset (Cranfield:
  gain = 5 - code) and the report says so.
* Every query goes through :meth:`TwoStage.run <gl_retrieval.retrieval.flow.TwoStage.run>`, the
  path an app's request takes; its :class:`~gl_retrieval.retrieval.flow.StageTrace` gives the
  first stage's candidates (scored as the ``retrieval`` run), the reranked results (the
  ``rerank`` run) and each stage's wall and process-CPU time. The first ``latency_queries``
  queries are embedded one at a time inside that call and timed; the rest get their vectors
  from one batch.

Example:
    >>> from gl_retrieval.eval.runner import evaluate_pipeline
    >>> report = evaluate_pipeline("eval.yaml", "data/cisi", modes=["bm25"])  # doctest: +SKIP
    >>> report.primary.metrics["nDCG@10"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gl_retrieval.config import PipelineConfig, RetrieverConfig
from gl_retrieval.errors import ConfigError
from gl_retrieval.eval.metrics import (
    DEFAULT_METRICS,
    BeirDataset,
    doc_level_ranking,
    evaluate,
    latency_percentiles,
    load_beir,
)
from gl_retrieval.eval.report import EvalReport, RunResult

if TYPE_CHECKING:
    from gl_retrieval.retrieval.flow import StageTrace

__all__ = [
    "RECALL_CURVE_KS",
    "EvalReport",
    "RunResult",
    "evaluate_pipeline",
    "parse_modes",
    "write_report",
]

#: Cutoffs of the recall@k curve in reports and plots.
RECALL_CURVE_KS: tuple[int, ...] = (1, 2, 3, 5, 10, 20, 30, 50, 100)
MIN_EVAL_TOP_K = 100
_MODE_SPECS = ("dense", "bm25", "hybrid", "hybrid:rrf", "hybrid:convex")

Progress = Callable[[str], None]


def parse_modes(
    specs: Sequence[str] | str | None, base: RetrieverConfig
) -> list[tuple[str, RetrieverConfig]]:
    """Turn mode specs (``dense``, ``bm25``, ``hybrid``, ``hybrid:rrf``, ``hybrid:convex``) into
    named retriever configs derived from ``base``; ``None`` is the configured mode alone.

    Example:
        >>> [name for name, _ in parse_modes("dense,hybrid:rrf", RetrieverConfig())]
        ['dense', 'hybrid:rrf']
    """
    if specs is None:
        items = [base.mode if base.mode != "hybrid" else f"hybrid:{base.fusion}"]
    elif isinstance(specs, str):
        items = [s.strip() for s in specs.split(",") if s.strip()]
    else:
        items = [s.strip() for s in specs if s.strip()]
    if not items:
        raise ConfigError(f"no retriever modes given; use some of: {', '.join(_MODE_SPECS)}")
    out: list[tuple[str, RetrieverConfig]] = []
    for item in dict.fromkeys(i.lower() for i in items):
        if item not in _MODE_SPECS:
            raise ConfigError(f"unknown mode {item!r}; use one of: {', '.join(_MODE_SPECS)}")
        mode, _, fusion = item.partition(":")
        update: dict[str, Any] = {"mode": mode}
        if fusion:
            update["fusion"] = fusion
        cfg = base.model_copy(update=update)
        name = item if mode != "hybrid" or fusion else f"hybrid:{cfg.fusion}"
        out.append((name, cfg))
    return out


def _settings(cfg: RetrieverConfig) -> dict[str, Any]:
    if cfg.mode != "hybrid":
        return {"mode": cfg.mode}
    if cfg.fusion == "rrf":
        return {
            "mode": "hybrid",
            "fusion": "rrf",
            "rrf_k": cfg.rrf_k,
            "candidate_k": cfg.candidate_k,
        }
    return {
        "mode": "hybrid",
        "fusion": "convex",
        "alpha": cfg.alpha,
        "normalization": cfg.normalization,
        "candidate_k": cfg.candidate_k,
    }


def _gains_label(ds: BeirDataset) -> str:
    if ds.gains is None:
        return "raw qrels scores (trec_eval semantics; a score <= 0 is not relevant)"
    table = ", ".join(f"{code}->{gain:g}" for code, gain in sorted(ds.gains.items()))
    return f"{ds.name} preset applied automatically (code->gain: {table})"


def _pipeline(source: Any) -> Any:
    from gl_retrieval.pipeline import RetrievalPipeline

    if isinstance(source, RetrievalPipeline):
        return source
    if isinstance(source, (PipelineConfig, Mapping, str, os.PathLike)):
        return RetrievalPipeline.from_config(source)
    raise ConfigError(
        f"expected a RetrievalPipeline, a PipelineConfig, a mapping or a config path, "
        f"not {type(source).__name__}"
    )


def evaluate_pipeline(
    pipeline_or_config: Any,
    dataset_dir: str | os.PathLike[str],
    *,
    split: str = "test",
    gains: Mapping[int, float] | str | None = "auto",
    modes: Sequence[str] | str | None = None,
    top_k: int | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    latency_queries: int = 100,
    rebuild: bool = False,
    progress: Progress | None = None,
    show_progress: bool = False,
) -> EvalReport:
    """Index a BEIR dataset's corpus with the pipeline's config, run its judged queries, score.

    Args:
        pipeline_or_config: A ``RetrievalPipeline``, a ``PipelineConfig``, a mapping, or a YAML
            path. Its ``sources`` are ignored: the dataset supplies the corpus.
        dataset_dir: Directory with ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.
        split: Which qrels file to use.
        gains: ``"auto"`` (a dataset's documented preset, e.g. Cranfield's 5 - code, else raw
            scores), ``"raw"``, a preset name, or a ``code -> gain`` mapping.
        modes: Retriever modes to compare on the same index, e.g. ``"dense,bm25,hybrid"``
            (also ``hybrid:rrf`` / ``hybrid:convex``); default: the configured mode.
        top_k: Chunks retrieved per query; default ``max(100, retriever.top_k)``.
        metrics: Metric names (see :func:`gl_retrieval.eval.metrics.evaluate`).
        latency_queries: How many queries (the first ones) are timed: embedded one at a time
            inside the run, as an app's request is, for the latency and CPU figures.
        rebuild: Re-embed the corpus into a fresh index at the configured storage.
        progress: Called with one-line progress messages (the CLI prints them to stderr).
        show_progress: Show a progress bar while embedding the corpus.

    Returns:
        An :class:`EvalReport`; ``report.to_dict()`` is the `eval --json` shape.

    Raises:
        SourceError: the dataset is missing or malformed.
        ConfigError: the split does not exist, a mode is unknown, or the configured storage
            holds documents that are not in this corpus (evaluate on a dedicated index).
    """
    from gl_retrieval.ingest.sources import Skipped, read_jsonl
    from gl_retrieval.retrieval.flow import SearchRequest, StageTrace

    say = progress or (lambda _msg: None)
    pipe = _pipeline(pipeline_or_config)
    cfg: PipelineConfig = pipe.config
    ds = load_beir(dataset_dir, split=split, gains=gains)
    runs_spec = parse_modes(modes, cfg.retriever)
    k = top_k if top_k is not None else max(MIN_EVAL_TOP_K, cfg.retriever.top_k)
    if k <= 0:
        raise ConfigError(f"top_k must be > 0, but got {k}")
    notes: list[str] = []
    if top_k is None and k != cfg.retriever.top_k:
        notes.append(
            f"Retrieved top_k={k} per query (config says {cfg.retriever.top_k}) so that "
            "Recall@100 is measurable."
        )

    skipped: list[Skipped] = []
    docs = list(read_jsonl(ds.corpus_path, skipped))
    if skipped:
        notes.append(f"{len(skipped)} corpus documents skipped (e.g. {skipped[0].reason}).")
    _check_dedicated(pipe, docs, rebuild=rebuild, corpus=ds.corpus_path)
    summary = pipe.index_documents(docs, rebuild=rebuild, show_progress=show_progress)
    say(f"index: {summary.line()}")

    qids = list(ds.queries)
    texts = [ds.queries[q] for q in qids]
    n_timed = min(len(texts), max(1, latency_queries))
    needs_vectors = any(c.mode != "bm25" for _, c in runs_spec)
    vectors = None
    if needs_vectors and len(texts) > n_timed:
        # The untimed queries: embedded in one batch, handed to the same run() call below.
        t0 = time.perf_counter()
        vectors = pipe.embedder.embed_queries(texts[n_timed:])
        say(
            f"embedded {len(texts) - n_timed} untimed queries in one batch in "
            f"{time.perf_counter() - t0:.1f}s"
        )
    reranker = pipe.reranker
    curve = [c for c in RECALL_CURVE_KS if c <= k]
    curve_metrics = [f"Recall@{c}" for c in curve]

    results: list[RunResult] = []
    for name, rcfg in runs_spec:
        # The library's own two stages (retrieval.flow), over the same index for each mode: one
        # TwoStage.run per query gives the first stage's candidates, the reranked results and
        # each stage's wall and CPU time (StageTrace), from the same calls.
        stages = pipe.stages(retriever=rcfg)
        run: dict[str, list[str]] = {}
        reranked: dict[str, list[str]] = {}
        cost = _StageCost()
        t_mode = time.perf_counter()
        for i, (qid, text) in enumerate(zip(qids, texts, strict=True)):
            req = SearchRequest(queries=(text,), filters=None, top_k=k, top_n=k)
            timed = i < n_timed  # embedded inside run(), as an app's single request is
            trace = StageTrace()
            # Not cached: the modes share pairs, and each stage's cost is the model's own.
            (ranked,) = stages.run(
                req,
                embed=pipe.embedder.embed_queries,
                vectors=None if timed or vectors is None else [vectors[i - n_timed]],
                trace=trace,
                rerank_cache=False,
            )
            (hits,) = trace.candidates
            run[qid] = doc_level_ranking(
                (h.node.ref_doc_id or h.node.node_id, h.score) for h in hits
            )
            if reranker is not None:
                reranked[qid] = doc_level_ranking(
                    (h.doc_id or h.node.node_id, h.score) for h in ranked
                )
            if timed:
                cost.add(trace)
            if (i + 1) % 100 == 0:
                say(f"{name}: {i + 1}/{len(qids)} queries")
        say(f"{name}: {len(qids)} queries in {time.perf_counter() - t_mode:.1f}s")
        per_stage = [("retrieval", run)] + ([("rerank", reranked)] if reranker else [])
        for stage, stage_run in per_stage:
            scores = evaluate(stage_run, ds.qrels, metrics=[*metrics, *curve_metrics])
            results.append(
                RunResult(
                    name=name if stage == "retrieval" else f"{name} + rerank",
                    mode=rcfg.mode,
                    stage=stage,
                    metrics={m: scores[m] for m in metrics},
                    latency_ms=cost.latency(stage, cumulative=True),
                    recall_curve={c: scores[f"Recall@{c}"] for c in curve},
                    settings=_settings(rcfg),
                    stage_latency_ms=cost.latency(stage, cumulative=False),
                    stage_cpu_ms=cost.cpu(stage),
                )
            )
    notes.append(
        f"Latency: full single-query path (query embedding, search, fusion"
        f"{', rerank' if reranker is not None else ''}) over the first {n_timed} queries, "
        "each through one TwoStage.run call (the later queries' vectors come from one batch). "
        "Per stage (stage_latency_ms, stage_cpu_ms): the first stage is the query embedding and "
        "the search, the rerank stage the cross-encoder and the ordering; CPU is process CPU "
        "time (time.process_time, the model runtime's threads included) per query."
    )
    return EvalReport(
        dataset=ds.name,
        split=ds.split,
        queries=len(qids),
        gains=_gains_label(ds),
        top_k=k,
        runs=results,
        notes=notes,
        index=summary.to_dict(),
    )


def _doc_id(hit: Any) -> str:
    return str(hit.node.ref_doc_id or hit.node.node_id)


def _check_dedicated(pipe: Any, docs: Sequence[Any], *, rebuild: bool, corpus: Path) -> None:
    """Refuse to add a dataset to an index that holds other documents (an app's index)."""
    if rebuild or not pipe.storage.exists():
        return
    stored = pipe.storage.read_documents()
    extra = sorted(set(stored) - {d.doc_id for d in docs})
    if extra:
        raise ConfigError(
            f"the index at {pipe.storage.location} holds {len(extra)} documents that are not in "
            f"{corpus} (e.g. {extra[0]!r}); evaluation needs an index of this corpus alone: point "
            "storage.persist_dir at a dedicated directory (e.g. .gl_index/eval-<dataset>), or "
            "pass --rebuild to re-embed that index from this corpus (replacing what it holds)"
        )


class _StageCost:
    """Per-query wall and CPU milliseconds of each stage, from :class:`StageTrace` objects."""

    def __init__(self) -> None:
        self.first_ms: list[float] = []
        self.first_cpu_ms: list[float] = []
        self.rerank_ms: list[float] = []
        self.rerank_cpu_ms: list[float] = []

    def add(self, trace: StageTrace) -> None:
        self.first_ms.append(trace.first_wall_s * 1000)
        self.first_cpu_ms.append(trace.first_cpu_s * 1000)
        self.rerank_ms.append(trace.rerank_wall_s * 1000)
        self.rerank_cpu_ms.append(trace.rerank_cpu_s * 1000)

    def latency(self, stage: str, *, cumulative: bool) -> dict[str, float]:
        """p50/p95 of ``stage`` alone, or of the path up to and including it."""
        if stage == "retrieval":
            return latency_percentiles(self.first_ms)
        if cumulative:
            return latency_percentiles(
                f + r for f, r in zip(self.first_ms, self.rerank_ms, strict=True)
            )
        return latency_percentiles(self.rerank_ms)

    def cpu(self, stage: str) -> dict[str, float]:
        """Process CPU milliseconds per query of ``stage`` alone: mean, p50 and p95."""
        samples = self.first_cpu_ms if stage == "retrieval" else self.rerank_cpu_ms
        return {"mean": round(statistics.fmean(samples), 3), **latency_percentiles(samples)}


def write_report(report: EvalReport, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``report.md``, ``report.json`` and ``report.png`` (see :mod:`gl_retrieval.eval.plot`).

    Returns:
        The paths written.
    """
    import json

    from gl_retrieval.eval.plot import plot_reports

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "report.md"
    md.write_text(
        f"# Retrieval evaluation\n\n![modes](report.png)\n\n{report.markdown()}", encoding="utf-8"
    )
    js = out / "report.json"
    js.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    png = plot_reports([report], out / "report.png")
    return [md, js, png]
