"""What a fine-tuning run writes beside the model: training.json, report.md + .png, model card.

``training.json`` records the base model and revision, sha256 of the training and dev data,
the hyperparameters, the mining statistics, and the dev metrics before training, after every
evaluated epoch, and of the model kept. It never holds test-split numbers: fine-tuning reads no
test split.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gl_retrieval.config import PipelineConfig
from gl_retrieval.config.presets import Prefixes

__all__ = ["config_change", "markdown_report", "model_card", "write_outputs"]

_METRICS = ("nDCG@10", "MRR@10", "Recall@100")


def config_change(
    cfg: PipelineConfig,
    *,
    stage: str,
    model_dir: Path,
    family: Prefixes | None = None,
    max_length: int | None = None,
    blend: float = 0.0,
) -> str:
    """The YAML to paste into the config to use the new model, and what else it needs."""
    if stage == "reranker":
        cut = f"  max_length: {max_length}  # as trained and measured\n" if max_length else ""
        if blend > 0:
            cut += f"  first_stage_weight: {blend:g}  # the score blend it was selected with\n"
        return (
            "reranker:\n"
            f"  model: {model_dir}\n{cut}"
            "# The index stays valid: the reranker only reorders what the first stage returns."
        )
    lines = ["embedder:", "  provider: huggingface", f"  model: {model_dir}"]
    if family is not None:
        # A local directory matches no preset: carry the prefixes over explicitly.
        if family.family != "none":
            lines.append(f"  preset: {family.family}")
        lines.append(f"  query_prefix: {json.dumps(family.query)}")
        lines.append(f"  document_prefix: {json.dumps(family.document)}")
    lines.append(
        "# The index must be rebuilt with the new model: `gl-retrieval index CONFIG --rebuild`"
    )
    lines.append(
        "# (loading the old index with it raises IndexMismatchError); point "
        "storage.persist_dir at a new directory to keep the old index while you compare."
    )
    del cfg
    return "\n".join(lines)


def _table(result: Any) -> list[str]:
    first = result.history[0]["dev"] if result.history else {}
    names = list(next(iter(first.values()))) if first else list(_METRICS)
    rows = ["| when | epoch | step | mode | " + " | ".join(names) + " |"]
    rows.append("|---|---:|---:|---|" + "---:|" * len(names))
    for h in result.history:
        when = "base model" if h["step"] == 0 else ("**kept**" if h.get("saved") else "trained")
        if result.stage == "reranker" and h["step"] == 0:
            when = "before"
        for mode, m in h["dev"].items():
            if result.stage == "reranker" and h["step"] > 0 and mode == "first_stage":
                continue  # the same candidates every epoch: shown once, before
            vals = " | ".join(f"{m[k]:.4f}" for k in names)
            rows.append(f"| {when} | {h['epoch']:g} | {h['step']} | {mode} | {vals} |")
    return rows


def markdown_report(result: Any, summary: dict[str, Any]) -> str:
    """The run as markdown: data, settings, dev metrics per evaluation, the config change."""
    lines = [f"# Fine-tuning report ({result.stage})", ""]
    if result.stage == "embedder":
        lines += ["![dev nDCG@10 per epoch](report.png)", ""]
    lines += [
        f"- base model: `{summary['base']['model']}` (revision {summary['base']['revision']})",
        f"- training data: `{summary['train']['source']}` — {summary['train']['queries']} "
        f"queries, {summary['train']['pairs']} pairs (sha256 {summary['train']['sha256'][:12]}…)",
        f"- dev: `{summary['dev']['source']}` — {summary['dev']['queries']} queries",
        f"- steps: {result.steps}, training time {result.train_seconds:.0f} s "
        f"(of which dev evaluation {result.eval_seconds:.0f} s)",
    ]
    hp = summary["hyperparameters"]
    lines.append(
        "- hyperparameters: "
        + ", ".join(
            f"{k}={hp[k]}"
            for k in ("epochs", "batch_size", "lr", "loss", "max_seq_length", "seed")
            if k in hp
        )
    )
    if summary.get("mining"):
        m = summary["mining"]
        lines.append(
            f"- hard negatives: {m['negatives']} mined with the {m['retriever_mode']} retriever "
            f"(skip {m['skip']}, depth {m['depth']}, relative margin {m['relative_margin']})"
        )
    for n in result.notes:
        lines.append(f"- {n}")
    lines.append("")
    lines += ["## Dev metrics", "", *_table(result), ""]
    if result.stage == "reranker":
        lines += [
            "`first_stage`: the configured first stage alone (its top_k candidates, computed "
            "once); `reranked`: the same candidates reordered by the model of that epoch, "
            "through the pipeline's two-stage flow; `configured_reranker`: the config's "
            "reranker, when it is a trained one.",
            "",
        ]
    if result.improved is False:
        lines += [
            "## Not an improvement",
            "",
            "No epoch beat the first stage alone on dev nDCG@10: using this model would make "
            "results worse. Keep the config as it is.",
            "",
        ]
    else:
        lines += ["## Use it", "", "```yaml", result.config_change, "```", ""]
    return "\n".join(lines)


def model_card(result: Any, summary: dict[str, Any]) -> str:
    """README.md of the model directory."""
    kind = "sentence-transformers bi-encoder" if result.stage == "embedder" else "cross-encoder"
    after = result.after or {}
    before = result.before or {}
    lines = [
        "---",
        "library_name: sentence-transformers",
        f"base_model: {summary['base']['model']}",
        "tags: [gl-retrieval, fine-tuned]",
        "---",
        "",
        f"# {Path(result.model_dir).name}: a fine-tuned {kind}",
        "",
        f"Fine-tuned from `{summary['base']['model']}` by `gl-retrieval finetune` on "
        f"{summary['train']['pairs']} (query, positive) pairs of one app's corpus. It is meant "
        "for that corpus; measure before using it elsewhere.",
        "",
    ]
    if result.stage == "embedder":
        p = summary["base"]["prefixes"]
        lines += [
            f"Prefixes (apply them as gl-retrieval does): query {p['query']!r}, "
            f"document {p['document']!r}.",
            "",
            "| dev | base nDCG@10 | fine-tuned nDCG@10 |",
            "|---|---:|---:|",
        ]
        for mode in after:
            lines.append(
                f"| {mode} | {before.get(mode, {}).get('nDCG@10', float('nan')):.4f} | "
                f"{after[mode]['nDCG@10']:.4f} |"
            )
    else:
        fs = before.get("first_stage", {}).get("nDCG@10")
        rr = after.get("reranked", {}).get("nDCG@10")
        if fs is not None and rr is not None:
            lines += [
                "| dev nDCG@10 | first stage alone | first stage + this reranker |",
                "|---|---:|---:|",
                f"| {summary['dev']['queries']} queries | {fs:.4f} | {rr:.4f} |",
            ]
        if result.improved is False:
            lines += ["", "**It did not beat the first stage alone on dev: do not use it.**"]
    lines += ["", "See `training.json` beside this directory for data hashes and settings.", ""]
    return "\n".join(lines)


def _plot(result: Any, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    modes = list(result.history[0]["dev"]) if result.history else []
    for mode in modes:
        xs = [h["epoch"] for h in result.history]
        ys = [h["dev"][mode]["nDCG@10"] for h in result.history]
        ax.plot(xs, ys, marker="o", label=mode)
    ax.set_xlabel("epoch (0 = base model)")
    ax.set_ylabel("dev nDCG@10")
    ax.set_title("Fine-tuning: dev nDCG@10")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(
    result: Any,
    *,
    cfg: PipelineConfig,
    train_data: Any,
    dev_data: Any,
    corpus: Any,
    opts: Any,
    mining: dict[str, Any] | None,
    base: dict[str, Any],
    max_seq_length: int | None,
) -> list[Path]:
    """Write training.json, report.md, report.png and the model card; return the paths."""
    from gl_retrieval.storage.manifest import package_versions

    out = Path(result.output)
    hp = {**opts.to_dict(), "max_seq_length": max_seq_length}
    for k in ("resume", "overwrite", "show_progress", "cache_dir"):
        hp.pop(k, None)
    summary = {
        "stage": result.stage,
        "base": base,
        "model_dir": str(result.model_dir),
        "train": train_data.summary(),
        "dev": dev_data.summary(),
        "corpus": {
            "documents": len(corpus.doc_ids),
            "chunks": len(corpus),
            "sha256": corpus.fingerprint(),
        },
        "retriever": cfg.retriever.model_dump(mode="json"),
        "hyperparameters": hp,
        "mining": mining,
        "dev_before": result.before,
        "dev_after": result.after,
        "best_epoch": result.best_epoch,
        "history": result.history,
        "steps": result.steps,
        "improved": result.improved,
        "train_seconds": round(result.train_seconds, 1),
        "eval_seconds": round(result.eval_seconds, 1),
        "notes": result.notes,
        "config_change": result.config_change,
        "versions": package_versions(),
    }
    paths = []
    tj = out / "training.json"
    tmp = tj.with_name(".training.json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, tj)
    paths.append(tj)
    md = out / "report.md"
    md.write_text(markdown_report(result, summary), encoding="utf-8")
    paths.append(md)
    if result.stage == "embedder":
        png = _plot(result, out / "report.png")
        if png is not None:
            paths.append(png)
    card = Path(result.model_dir) / "README.md"
    card.write_text(model_card(result, summary), encoding="utf-8")
    paths.append(card)
    return paths
