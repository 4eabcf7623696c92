"""The result of a fine-tuning run, and the layout of its output directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BEST_DIR", "CHECKPOINTS", "MODEL_DIR", "RUN_DIR", "FinetuneResult", "last_checkpoint"]

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
