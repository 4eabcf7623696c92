"""Fine-tuning options: one frozen, checked record, saved with the run so `--resume` can
refuse a resume with different settings."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from gl_retrieval.errors import TrainingError
from gl_retrieval.train.mining import MiningOptions

__all__ = ["RESUME_NEUTRAL", "FinetuneOptions"]

#: Options that may differ between a run and its resume.
RESUME_NEUTRAL = frozenset(
    {"resume", "overwrite", "show_progress", "cache_dir", "keep_checkpoints"}
)


@dataclass(frozen=True)
class FinetuneOptions:
    """Hyperparameters and run settings of one fine-tuning run.

    Args:
        stage: ``embedder`` (the bi-encoder) or ``reranker`` (the cross-encoder).
        epochs: Passes over the training pairs.
        batch_size: Pairs per step; with MNRL every other pair in the batch is a negative.
        lr: Peak learning rate (linear warm-up, then linear decay).
        negatives: Hard negatives mined per pair (0: in-batch negatives only). The reranker
            stage needs at least 1 and defaults to 3.
        mine_skip: Mined negatives skip the first ``mine_skip`` non-positive documents.
        mine_depth: ... and are drawn from the next ``mine_depth``.
        relative_margin: Drop a candidate whose dense similarity exceeds ``(1 - margin)`` times
            the positive's; ``None`` disables the guard.
        dev_size: Queries held out as dev when no dev set is given (default 10%, at most 100).
        seed: Seeds Python, numpy, torch, the dev split and the data order.
        max_steps: Stop after this many optimizer steps (overrides ``epochs``; tests, smoke runs).
        max_seq_length: Token limit while training (and of the saved model); default the model's.
        warmup_ratio: Fraction of the steps spent warming the learning rate up.
        loss: ``mnrl`` (MultipleNegativesRankingLoss) or ``cached_mnrl`` (its GradCache variant,
            for batches larger than memory allows).
        mini_batch_size: ``cached_mnrl`` only: texts per forward pass.
        eval_each_epoch: Evaluate dev after every epoch (else only before and at the end).
        save_steps: Write a resumable checkpoint every this many steps (default: each epoch).
        keep_checkpoints: Keep ``checkpoints/`` after a successful run (default: delete).
        resume: Continue from the last complete checkpoint in ``output``.
        overwrite: Replace a non-empty ``output``.
        cache_dir: Where the base model's corpus vectors are cached between runs.
        show_progress: tqdm progress bars.
    """

    stage: Literal["embedder", "reranker"] = "embedder"
    epochs: int = 3  # SciFact: one epoch at lr 2e-5 gained half of three (docs/finetuning.md)
    batch_size: int = 32
    lr: float = 2e-5
    negatives: int | None = None
    mine_skip: int = 3
    mine_depth: int = 50
    relative_margin: float | None = 0.05
    dev_size: int | None = None
    seed: int = 0
    max_steps: int | None = None
    max_seq_length: int | None = None
    warmup_ratio: float = 0.1
    loss: Literal["mnrl", "cached_mnrl"] = "mnrl"
    mini_batch_size: int = 32
    eval_each_epoch: bool = True
    save_steps: int | None = None
    keep_checkpoints: bool = False
    resume: bool = False
    overwrite: bool = False
    cache_dir: str | None = None
    show_progress: bool = True

    @property
    def n_negatives(self) -> int:
        if self.negatives is not None:
            return self.negatives
        return 3 if self.stage == "reranker" else 0

    def mining(self) -> MiningOptions:
        return MiningOptions(
            count=self.n_negatives,
            skip=self.mine_skip,
            depth=self.mine_depth,
            relative_margin=self.relative_margin,
        )

    def check(self) -> None:
        """Refuse bad values, naming the option and the value."""
        if self.stage not in ("embedder", "reranker"):
            raise TrainingError(f"stage must be 'embedder' or 'reranker', but got {self.stage!r}")
        if self.epochs <= 0:
            raise TrainingError(f"epochs must be > 0, but got {self.epochs}")
        if self.batch_size <= 1:
            raise TrainingError(
                f"batch_size must be > 1 (in-batch negatives need company), but got "
                f"{self.batch_size}"
            )
        if not self.lr > 0:
            raise TrainingError(f"lr must be > 0, but got {self.lr}")
        if self.lr >= 1:
            raise TrainingError(f"lr must be < 1 (typical: 1e-5 to 1e-4), but got {self.lr}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise TrainingError(f"max_steps must be > 0, but got {self.max_steps}")
        if self.max_seq_length is not None and self.max_seq_length <= 8:
            raise TrainingError(f"max_seq_length must be > 8, but got {self.max_seq_length}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise TrainingError(f"warmup_ratio must be within [0, 1), but got {self.warmup_ratio}")
        if self.loss not in ("mnrl", "cached_mnrl"):
            raise TrainingError(f"loss must be 'mnrl' or 'cached_mnrl', but got {self.loss!r}")
        if self.mini_batch_size <= 0:
            raise TrainingError(f"mini_batch_size must be > 0, but got {self.mini_batch_size}")
        if self.save_steps is not None and self.save_steps <= 0:
            raise TrainingError(f"save_steps must be > 0, but got {self.save_steps}")
        if self.dev_size is not None and self.dev_size <= 0:
            raise TrainingError(f"dev_size must be > 0, but got {self.dev_size}")
        if self.stage == "reranker" and self.n_negatives < 1:
            raise TrainingError(
                f"the reranker stage needs negatives >= 1 (BCE needs label-0 pairs), but got "
                f"{self.n_negatives}"
            )
        self.mining().check()

    def check_data(self, n_pairs: int) -> None:
        """Refuse a batch the training data cannot fill."""
        if self.batch_size > n_pairs:
            raise TrainingError(
                f"batch_size {self.batch_size} is larger than the {n_pairs} training pairs: "
                f"use --batch-size {max(2, min(32, n_pairs // 2))} or add data"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differs(self, saved: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Settings that differ from a saved run's (ignoring resume-neutral ones)."""
        now = self.to_dict()
        return {
            k: (saved.get(k), v)
            for k, v in now.items()
            if k not in RESUME_NEUTRAL and saved.get(k) != v
        }


def training_arguments(
    opts: FinetuneOptions, *, output_dir: Path, examples: int, device: str
) -> dict[str, Any]:
    """The trainer arguments both stages share (embedder and cross-encoder): steps, seeds,
    checkpoints every epoch (or ``save_steps``), the device, no external reporting."""
    steps_per_epoch = max(1, examples // opts.batch_size)
    total_steps = opts.max_steps or steps_per_epoch * opts.epochs
    return {
        "output_dir": str(output_dir),
        "num_train_epochs": opts.epochs,
        "max_steps": opts.max_steps if opts.max_steps is not None else -1,
        "per_device_train_batch_size": opts.batch_size,
        "learning_rate": opts.lr,
        "warmup_steps": math.ceil(opts.warmup_ratio * total_steps),
        "seed": opts.seed,
        "data_seed": opts.seed,
        "save_strategy": "steps" if opts.save_steps else "epoch",
        "save_steps": opts.save_steps or steps_per_epoch,
        "save_total_limit": 2,
        "eval_strategy": "no",
        "logging_steps": max(1, steps_per_epoch // 4),
        "report_to": "none",
        "disable_tqdm": not opts.show_progress,
        "use_cpu": device == "cpu",
        "fp16": device == "cuda",
        "dataloader_num_workers": 0,
    }
