"""The result of a fine-tuning run, and the layout of its output directory."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BEST_DIR",
    "CHECKPOINTS",
    "MODEL_DIR",
    "RUN_DIR",
    "FinetuneResult",
    "atomic_json",
    "best_saved",
    "keep_epoch",
    "last_checkpoint",
]

RUN_DIR = "run"
CHECKPOINTS = "checkpoints"
MODEL_DIR = "model"
BEST_DIR = "best"


@dataclass
class FinetuneResult:
    """What a run produced and measured."""

    output: Path
    model_dir: Path
    stage: str
    before: dict[str, dict[str, float]] | None
    after: dict[str, dict[str, float]] | None
    best_epoch: float | None
    history: list[dict[str, Any]]
    config_change: str
    notes: list[str] = field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    steps: int = 0
    #: True when the kept model beats the starting point on dev nDCG@10 (for the reranker: the
    #: first stage alone); False: do not use it; None: not measured.
    improved: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "model_dir": str(self.model_dir),
            "stage": self.stage,
            "dev_before": self.before,
            "dev_after": self.after,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "config_change": self.config_change,
            "notes": self.notes,
            "train_seconds": round(self.train_seconds, 1),
            "eval_seconds": round(self.eval_seconds, 1),
            "steps": self.steps,
            "improved": self.improved,
        }


def last_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint (its ``trainer_state.json`` is written last)."""
    ckpt = out / CHECKPOINTS
    if not ckpt.is_dir():
        return None
    done = [
        p
        for p in ckpt.iterdir()
        if p.name.startswith("checkpoint-")
        and p.name.split("-")[-1].isdigit()
        and (p / "trainer_state.json").exists()
    ]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def atomic_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def best_saved(
    history: list[dict[str, Any]], score: Callable[[dict[str, Any]], float]
) -> tuple[float, dict[str, Any] | None]:
    """The best trained epoch whose model is saved in ``BEST_DIR``, and its ``score`` (-1 and
    None before any).

    Example:
        >>> h = [{"step": 0, "dev": 0.5}, {"step": 9, "dev": 0.6, "saved": True}]
        >>> best_saved(h, lambda e: e["dev"])
        (0.6, {'step': 9, 'dev': 0.6, 'saved': True})
    """
    trained = [h for h in history if h["step"] > 0 and h.get("saved")]
    if not trained:
        return -1.0, None
    best = max(trained, key=score)
    return score(best), best


def keep_epoch(
    entry: dict[str, Any],
    *,
    history: list[dict[str, Any]],
    score: Callable[[dict[str, Any]], float],
    out: Path,
    save: Callable[[Path], None],
    history_file: Path,
) -> None:
    """Add one epoch's dev ``entry`` to ``history`` (written to ``history_file``); when it
    beats every saved epoch, save its model into ``out/BEST_DIR`` (``save(tmp)``, then an
    atomic swap) and mark it ``saved``. The one rule both training stages keep the best by."""
    best, _ = best_saved(history, score)
    if score(entry) > best:
        tmp = out / f".{BEST_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save(tmp)
        shutil.rmtree(out / BEST_DIR, ignore_errors=True)
        os.replace(tmp, out / BEST_DIR)
        for h in history:
            h["saved"] = False
        entry["saved"] = True
    history.append(entry)
    atomic_json(history_file, history)
