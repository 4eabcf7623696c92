"""Fine-tuning options: one frozen, checked record, saved with the run so `--resume` can
refuse a resume with different settings."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from gl_retrieval.errors import TrainingError
from gl_retrieval.train.mining import MiningOptions

__all__ = ["RERANKER_LOSSES", "RESUME_NEUTRAL", "STAGE_DEFAULTS", "FinetuneOptions"]

#: Losses per stage. Embedder: MultipleNegativesRankingLoss (or its cached variant). Reranker:
#: ``bce`` (BinaryCrossEntropyLoss on labelled pairs, ``pos_weight`` against the imbalance),
#: ``mnrl`` (the cross-encoder MultipleNegativesRankingLoss: softmax over the positive, the mined
#: negatives and ``random_negatives`` in-batch ones), ``listnet`` (ListNetLoss over each query's
#: positive and negatives).
EMBEDDER_LOSSES = ("mnrl", "cached_mnrl")
RERANKER_LOSSES = ("bce", "mnrl", "listnet")

#: What an option left at None means, per stage. The reranker's are the recipe measured on
#: SciFact in docs/finetuning.md ("A reranker recipe that learns").
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "embedder": {
        "epochs": 3,  # SciFact: one epoch at lr 2e-5 gained half of three (docs/finetuning.md)
        "batch_size": 32,
        "lr": 2e-5,
        "negatives": 0,
        "random_negatives": 0,
        "loss": "mnrl",
    },
    "reranker": {
        "epochs": 1,
        "batch_size": 16,
        "negatives": 2,
        "random_negatives": 3,
        "loss": "mnrl",
        "max_seq_length": 128,
    },
}

#: The reranker's default ``lr`` depends on the starting point (known once it is loaded): a
#: trained cross-encoder is adjusted gently; a fresh head (a bi-encoder start) needs more.
RERANKER_LR = {"cross_encoder": 2e-5, "fresh_head": 2e-4}

#: A fresh head is measured and selected with this score blend unless told otherwise
#: (``first_stage_weight``): alone it stayed below the first stage on SciFact, blended it beat it.
FRESH_HEAD_BLEND = 0.5

#: Options that may differ between a run and its resume.
RESUME_NEUTRAL = frozenset(
    {"resume", "overwrite", "show_progress", "cache_dir", "keep_checkpoints"}
)


@dataclass(frozen=True)
class FinetuneOptions:
    """Hyperparameters and run settings of one fine-tuning run.

    Args:
        stage: ``embedder`` (the bi-encoder) or ``reranker`` (the cross-encoder).
        epochs: Passes over the training pairs (None: the stage's default, see
            :data:`STAGE_DEFAULTS`, as for ``batch_size``, ``lr``, ``negatives``, ``loss``).
        batch_size: Pairs per step; with MNRL every other pair in the batch is a negative.
        lr: Peak learning rate (linear warm-up, then linear decay). The reranker's default
            depends on the starting point (:data:`RERANKER_LR`).
        negatives: Hard negatives mined per pair (0: in-batch negatives only). The reranker
            stage needs at least 1.
        mine_skip: Mined negatives skip the first ``mine_skip`` non-positive documents.
        mine_depth: ... and are drawn from the next ``mine_depth``.
        relative_margin: Drop a candidate whose dense similarity exceeds ``(1 - margin)`` times
            the positive's; ``None`` disables the guard.
        dev_size: Queries held out as dev when no dev set is given (default 10%, at most 100).
        seed: Seeds Python, numpy, torch, the dev split and the data order.
        max_steps: Stop after this many optimizer steps (overrides ``epochs``; tests, smoke runs).
        max_seq_length: Token limit while training (and of the saved model); default the
            model's (the reranker: 256, query and passage together).
        warmup_ratio: Fraction of the steps spent warming the learning rate up.
        loss: Embedder: ``mnrl`` (MultipleNegativesRankingLoss) or ``cached_mnrl`` (its
            GradCache variant, for batches larger than memory allows). Reranker: ``bce``,
            ``mnrl`` or ``listnet`` (see :data:`RERANKER_LOSSES`).
        base_model: Reranker only: the starting point (a cross-encoder, or any encoder: a
            bi-encoder such as ``packaged:all-MiniLM-L6-v2`` gets a fresh one-label head);
            default the config's ``reranker.model``.
        pos_weight: Reranker ``bce`` only: weight of the positive pairs (None: the number of
            negatives per positive, which balances the classes).
        random_negatives: Reranker only: negatives drawn at random from the corpus per pair
            (``bce``, ``listnet``), or in-batch ones per query (``mnrl``), besides the mined ones
            (default 3 for the reranker).
        first_stage_weight: Reranker only: also measure dev with this score blend (the
            ``reranker.first_stage_weight`` the pipeline would use) and select the epoch by it;
            None: the config's value, or :data:`FRESH_HEAD_BLEND` for a fresh head when the
            config has none (said in a note); 0: the reranker's score alone.
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
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    negatives: int | None = None
    mine_skip: int = 3
    mine_depth: int = 50
    relative_margin: float | None = 0.05
    dev_size: int | None = None
    seed: int = 0
    max_steps: int | None = None
    max_seq_length: int | None = None
    warmup_ratio: float = 0.1
    loss: str | None = None
    base_model: str | None = None
    pos_weight: float | None = None
    random_negatives: int | None = None
    first_stage_weight: float | None = None
    mini_batch_size: int = 32
    eval_each_epoch: bool = True
    save_steps: int | None = None
    keep_checkpoints: bool = False
    resume: bool = False
    overwrite: bool = False
    cache_dir: str | None = None
    show_progress: bool = True

    def resolved(self) -> FinetuneOptions:
        """These options with every None that has a stage default filled in (an unknown stage
        is left for :meth:`check` to refuse)."""
        defaults = STAGE_DEFAULTS.get(self.stage, {})
        fill = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return replace(self, **fill) if fill else self

    @property
    def n_negatives(self) -> int:
        return int(self.resolved().negatives or 0)

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
        self.resolved()._check()

    def _check(self) -> None:
        epochs, batch = int(self.epochs or 0), int(self.batch_size or 0)
        lr = float(self.lr or 0) if self.lr is not None or self.stage != "reranker" else 1e-4
        if epochs <= 0:
            raise TrainingError(f"epochs must be > 0, but got {epochs}")
        if batch <= 1:
            raise TrainingError(
                f"batch_size must be > 1 (in-batch negatives need company), but got {batch}"
            )
        if not lr > 0:
            raise TrainingError(f"lr must be > 0, but got {lr}")
        if lr >= 1:
            raise TrainingError(f"lr must be < 1 (typical: 1e-5 to 1e-4), but got {lr}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise TrainingError(f"max_steps must be > 0, but got {self.max_steps}")
        if self.max_seq_length is not None and self.max_seq_length <= 8:
            raise TrainingError(f"max_seq_length must be > 8, but got {self.max_seq_length}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise TrainingError(f"warmup_ratio must be within [0, 1), but got {self.warmup_ratio}")
        losses = RERANKER_LOSSES if self.stage == "reranker" else EMBEDDER_LOSSES
        if self.loss not in losses:
            raise TrainingError(
                f"loss for the {self.stage} must be one of {', '.join(losses)}, but got "
                f"{self.loss!r}"
            )
        if self.pos_weight is not None and not self.pos_weight > 0:
            raise TrainingError(f"pos_weight must be > 0, but got {self.pos_weight}")
        w = self.first_stage_weight
        if w is not None and not 0.0 <= w < 1.0:
            raise TrainingError(f"first_stage_weight must be within [0, 1), but got {w}")
        if (self.random_negatives or 0) < 0:
            raise TrainingError(f"random_negatives must be >= 0, but got {self.random_negatives}")
        if self.stage == "embedder" and (self.base_model or self.random_negatives):
            raise TrainingError(
                "base_model and random_negatives are reranker options (the embedder starts "
                "from embedder.model); drop them or pass --stage reranker"
            )
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
        batch = int(self.resolved().batch_size or 0)
        if batch > n_pairs:
            raise TrainingError(
                f"batch_size {batch} is larger than the {n_pairs} training pairs: "
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


def progress_callback(say: Any) -> Any:
    """A trainer callback that reports the trainer's logs (loss, learning rate) through
    ``say`` (the CLI prints it to stderr), so nothing of the trainer's lands on stdout."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                shown = {k: v for k, v in logs.items() if k in ("loss", "learning_rate", "epoch")}
                say("trainer: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))

    return _Progress()
