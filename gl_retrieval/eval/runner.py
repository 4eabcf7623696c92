"""Evaluate a configured pipeline on a BEIR-layout dataset: the library behind `gl-retrieval eval`.

:func:`evaluate_pipeline` indexes the dataset's ``corpus.jsonl`` with the config's embedder and
storage (incrementally: a stored index that already holds the corpus embeds nothing, so several
retriever modes share one embedding pass), runs every judged query through the first stage
(and the reranker, when configured), and scores documents at their best chunk's rank.

* Depth: every run retrieves ``max(100, retriever.top_k)`` chunks, so ``Recall@100`` means
  something even when the config says ``top_k: 20``; the reranker (if any) reorders all of them.
* Gains: trec_eval semantics; ``gains="auto"`` applies a dataset's documented preset (Cranfield:
  gain = 5 - code) and the report says so.
* Queries are embedded in one batch for the metrics; latency is measured separately on the
  full retrieve path of single queries (query embedding, search, fusion, rerank), on the first
  ``latency_queries`` queries.

Example:
    >>> from gl_retrieval.eval.runner import evaluate_pipeline
    >>> report = evaluate_pipeline("eval.yaml", "data/cisi", modes=["bm25"])  # doctest: +SKIP
    >>> report.primary.metrics["nDCG@10"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

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
        latency_queries: How many queries (the first ones) time the full single-query path.
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
    from gl_retrieval.retrieval.flow import SearchRequest

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
    needs_vectors = any(c.mode != "bm25" for _, c in runs_spec)
    vectors = None
    if needs_vectors:
        t0 = time.perf_counter()
        vectors = pipe.embedder.embed_queries(texts)
        say(f"embedded {len(texts)} queries in one batch in {time.perf_counter() - t0:.1f}s")
    reranker = pipe.reranker
    curve = [c for c in RECALL_CURVE_KS if c <= k]
    curve_metrics = [f"Recall@{c}" for c in curve]

    results: list[RunResult] = []
    for name, rcfg in runs_spec:
        # The library's own two stages (retrieval.flow), over the same index for each mode.
        stages = pipe.stages(retriever=rcfg)
        run: dict[str, list[str]] = {}
        reranked: dict[str, list[str]] = {}
        t_mode = time.perf_counter()
        for i, (qid, text) in enumerate(zip(qids, texts, strict=True)):
            req = SearchRequest(queries=(text,), filters=None, top_k=k, top_n=k)
            (hits,) = stages.candidates(req, None if vectors is None else [vectors[i]])
            run[qid] = doc_level_ranking(
                (h.node.ref_doc_id or h.node.node_id, h.score) for h in hits
            )
            if reranker is not None:
                # Not cached: the modes share pairs, and each stage's cost is the model's own.
                scores = reranker.score_pairs(stages.pairs(req, [hits]), cache=False)
                (ranked,) = stages.results(req, [hits], scores)
                reranked[qid] = doc_level_ranking(
                    (h.doc_id or h.node.node_id, h.score) for h in ranked
                )
            if (i + 1) % 100 == 0:
                say(f"{name}: {i + 1}/{len(qids)} queries")
        say(f"{name}: {len(qids)} queries in {time.perf_counter() - t_mode:.1f}s")
        lat_first, lat_full = _time_single_queries(
            stages, pipe.embedder.embed_queries, texts[: max(1, latency_queries)], k=k
        )
        stages = [("retrieval", run, lat_first)]
        if reranker is not None:
            stages.append(("rerank", reranked, lat_full))
        for stage, stage_run, lat in stages:
            scores = evaluate(stage_run, ds.qrels, metrics=[*metrics, *curve_metrics])
            results.append(
                RunResult(
                    name=name if stage == "retrieval" else f"{name} + rerank",
                    mode=rcfg.mode,
                    stage=stage,
                    metrics={m: scores[m] for m in metrics},
                    latency_ms=latency_percentiles(lat),
                    recall_curve={c: scores[f"Recall@{c}"] for c in curve},
                    settings=_settings(rcfg),
                )
            )
    n_lat = min(len(texts), max(1, latency_queries))
    notes.append(
        f"Latency: full single-query path (query embedding, search, fusion"
        f"{', rerank' if reranker is not None else ''}) over the first {n_lat} queries; "
        "metrics use queries embedded in one batch."
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


def _time_single_queries(
    stages: Any, embed: Any, texts: Sequence[str], *, k: int
) -> tuple[list[float], list[float]]:
    """Milliseconds of the first stage (embedding the query included) and of both stages, one
    query at a time, as an app's single request runs them."""
    from gl_retrieval.retrieval.flow import SearchRequest

    first_ms: list[float] = []
    full_ms: list[float] = []
    for text in texts:
        req = SearchRequest(queries=(text,), filters=None, top_k=k, top_n=k)
        t0 = time.perf_counter()
        vectors = embed([text]) if stages.needs_vectors else None
        candidates = stages.candidates(req, vectors)
        t1 = time.perf_counter()
        if stages.reranker is not None:
            scores = stages.reranker.score_pairs(stages.pairs(req, candidates), cache=False)
            stages.results(req, candidates, scores)
        t2 = time.perf_counter()
        first_ms.append((t1 - t0) * 1000)
        full_ms.append((t2 - t0) * 1000)
    return first_ms, full_ms


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
