"""`--stage reranker`: fine-tune the configured cross-encoder with ``CrossEncoderTrainer``.

Binary cross-entropy on (query, positive) pairs labelled 1 and (query, mined negative) pairs
labelled 0. Its quality is **not measured** here: no trained cross-encoder ships in any package,
so nothing offline could show a before/after that means anything. The mechanics are tested on a
tiny random cross-encoder; measure a real one with `gl-retrieval eval` on your own data.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from gl_retrieval.config import PipelineConfig
from gl_retrieval.errors import TrainingError
from gl_retrieval.train.options import training_arguments

__all__ = ["build_pair_dataset", "train_reranker"]


def build_pair_dataset(data: Any) -> Any:
    """``query``, ``passage``, ``label`` rows: 1.0 for positives, 0.0 for mined negatives."""
    from gl_retrieval._deps import require

    datasets = require("datasets", extra="train")
    rows: dict[str, list[Any]] = {"query": [], "passage": [], "label": []}
    for p in data.pairs:
        rows["query"].append(p.query)
        rows["passage"].append(p.positive)
        rows["label"].append(1.0)
        for neg in p.negatives:
            rows["query"].append(p.query)
            rows["passage"].append(neg)
            rows["label"].append(0.0)
    return datasets.Dataset.from_dict(rows)


def train_reranker(
    cfg: PipelineConfig,
    *,
    out: Path,
    train_data: Any,
    dev_data: Any,
    corpus: Any,
    opts: Any,
    notes: list[str],
    mining: dict[str, Any] | None,
    say: Any,
) -> Any:
    from gl_retrieval._deps import require
    from gl_retrieval.models import resolve_model_path
    from gl_retrieval.models.devices import resolve_device
    from gl_retrieval.train.report import config_change, write_outputs
    from gl_retrieval.train.result import (
        CHECKPOINTS,
        MODEL_DIR,
        FinetuneResult,
        last_checkpoint,
    )

    st = require("sentence_transformers", extra="train")
    require("accelerate", extra="train")
    rcfg = cfg.reranker
    if rcfg is None:
        raise TrainingError("--stage reranker needs a `reranker` section in the config")
    device = resolve_device(rcfg.device)
    path = resolve_model_path(rcfg.model, revision=rcfg.revision, role="reranker")
    max_len = opts.max_seq_length or rcfg.max_length
    model = st.CrossEncoder(path, device=device, num_labels=1, max_length=max_len)
    dataset = build_pair_dataset(train_data)
    args = st.CrossEncoderTrainingArguments(
        **training_arguments(
            opts, output_dir=out / CHECKPOINTS, examples=len(dataset), device=device
        )
    )
    loss = st.cross_encoder.losses.BinaryCrossEntropyLoss(model)
    trainer = st.CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    resume_from = None
    if opts.resume:
        ck = last_checkpoint(out)
        resume_from = str(ck) if ck is not None else None
    n_pos = len(train_data.pairs)
    say(
        f"training the reranker on {len(dataset)} pairs ({n_pos} positive, "
        f"{len(dataset) - n_pos} negative), batch {opts.batch_size}, {opts.epochs} epoch(s)"
    )
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - t0
    model_dir = out / MODEL_DIR
    shutil.rmtree(model_dir, ignore_errors=True)
    model.save_pretrained(str(model_dir))
    if not opts.keep_checkpoints:
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    notes.append(
        "reranker quality is not measured offline: no trained cross-encoder ships in any "
        "package; evaluate it on your data with `gl-retrieval eval`"
    )
    result = FinetuneResult(
        output=out,
        model_dir=model_dir,
        stage="reranker",
        before=None,
        after=None,
        best_epoch=None,
        history=[],
        config_change=config_change(cfg, stage="reranker", model_dir=model_dir),
        notes=notes,
        train_seconds=seconds,
        steps=int(trainer.state.global_step),
    )
    write_outputs(
        result,
        cfg=cfg,
        train_data=train_data,
        dev_data=dev_data,
        corpus=corpus,
        opts=opts,
        mining=mining,
        base={"model": rcfg.model, "revision": rcfg.revision, "prefixes": None},
        max_seq_length=max_len,
    )
    return result
