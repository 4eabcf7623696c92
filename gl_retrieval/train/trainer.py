"""Fine-tune the configured embedder (or reranker) on an app's own corpus.

:func:`finetune` is the library behind `gl-retrieval finetune`. For ``stage="embedder"``:

1. open the config's index (it must exist: ids resolve through it, negatives are mined from it);
2. load and validate the training data, and the dev set (or split one off, seeded);
3. evaluate the base model on dev (nDCG@10, MRR@10, Recall@100; dense and hybrid);
4. mine hard negatives with the configured retriever, when asked;
5. train with sentence-transformers' ``SentenceTransformerTrainer``,
   ``MultipleNegativesRankingLoss`` (or the cached variant) and the ``NO_DUPLICATES`` batch
   sampler, the query / document prefixes applied exactly as the pipeline applies them;
6. evaluate dev after each epoch and keep the best epoch's model;
7. write ``model/`` (with a model card), ``training.json``, ``report.md`` and ``report.png``.

Output layout::

    OUTPUT/model/          the sentence-transformers model (embedder.model points here)
    OUTPUT/training.json   base model, data hashes, hyperparameters, dev metrics before/after
    OUTPUT/report.md, report.png
    OUTPUT/run/            options, the exact (mined) training pairs, dev history: for --resume
    OUTPUT/checkpoints/    resumable trainer checkpoints (deleted after success by default)

Example:
    >>> from gl_retrieval.train import FinetuneOptions, finetune
    >>> result = finetune("app.yaml", train="data/train.jsonl", output="runs/ft1",
    ...                   options=FinetuneOptions(epochs=3))  # doctest: +SKIP
    >>> print(result.config_change)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from gl_retrieval.config import HuggingFaceEmbedderConfig, PipelineConfig, load_config
from gl_retrieval.config.presets import resolve_prefixes
from gl_retrieval.errors import TrainingError
from gl_retrieval.models.runtimes import apply_torch_threads, resolve_threads
from gl_retrieval.train.corpus import Corpus, load_corpus
from gl_retrieval.train.data import (
    TrainingData,
    TrainingPair,
    check_data_path,
    check_disjoint,
    load_training_data,
    split_dev,
)
from gl_retrieval.train.evaluate import dev_metrics
from gl_retrieval.train.mining import mine_hard_negatives
from gl_retrieval.train.options import FinetuneOptions, progress_callback, training_arguments
from gl_retrieval.train.result import (
    BEST_DIR,
    CHECKPOINTS,
    MODEL_DIR,
    RUN_DIR,
    FinetuneResult,
    atomic_json,
    best_saved,
    keep_epoch,
    last_checkpoint,
)

__all__ = ["FinetuneResult", "build_dataset", "finetune"]

Progress = Callable[[str], None]

# -- small helpers -------------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    import torch
    import transformers

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    transformers.set_seed(seed)


def _check_output(out: Path, options: FinetuneOptions) -> None:
    """Refuse an unusable ``--output`` without touching it."""
    if options.resume:
        if not (out / RUN_DIR / "options.json").exists():
            raise TrainingError(
                f"--resume: {out} holds no run to resume (no {RUN_DIR}/options.json); start "
                "the run without --resume"
            )
        return
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--output {out} is a file; give a directory")
    if out.exists() and any(out.iterdir()) and not options.overwrite:
        raise TrainingError(
            f"--output {out} is not empty; pass --overwrite to replace it, --resume to "
            "continue the run in it, or choose another directory"
        )


def _prepare_output(out: Path, options: FinetuneOptions) -> None:
    """Empty (``--overwrite``) and create ``--output``; called once the inputs have loaded."""
    if options.resume:
        return
    if out.exists() and any(out.iterdir()):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _pairs_to_jsonl(path: Path, data: TrainingData) -> None:
    rows = [
        json.dumps(
            {
                "qid": p.qid,
                "query": p.query,
                "positive": p.positive,
                "positive_id": p.positive_id,
                "negatives": list(p.negatives),
            }
        )
        for p in data.pairs
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def _pairs_from_jsonl(path: Path, like: TrainingData) -> TrainingData:
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            o = json.loads(line)
            pairs.append(
                TrainingPair(
                    o["qid"], o["query"], o["positive"], o["positive_id"], tuple(o["negatives"])
                )
            )
    return replace(like, pairs=tuple(pairs))


def build_dataset(data: TrainingData, *, query_prefix: str, document_prefix: str) -> Any:
    """The ``datasets.Dataset`` the embedder trainer receives: ``anchor``, ``positive`` and
    ``negative_1..n`` columns, prefixed exactly as the pipeline prefixes queries and documents.

    Pairs short of mined negatives repeat their last one (or take another pair's, seeded), so
    every row has the same columns.
    """
    datasets = _require_train("datasets")
    n = max((len(p.negatives) for p in data.pairs), default=0)
    cols: dict[str, list[str]] = {"anchor": [], "positive": []}
    for i in range(n):
        cols[f"negative_{i + 1}"] = []
    pool = [neg for p in data.pairs for neg in p.negatives]
    rng = random.Random(0)
    for p in data.pairs:
        cols["anchor"].append(query_prefix + p.query)
        cols["positive"].append(document_prefix + p.positive)
        negs = list(p.negatives)
        while len(negs) < n:
            negs.append(negs[-1] if negs else rng.choice(pool))
        for i, neg in enumerate(negs):
            cols[f"negative_{i + 1}"].append(document_prefix + neg)
    return datasets.Dataset.from_dict(cols)


def _require_train(module: str) -> Any:
    from gl_retrieval._deps import require

    return require(module, extra="train")


def _first_module(*names: str) -> Any:
    """The first importable of ``names`` (sentence-transformers 6 moved modules that 5 had)."""
    import importlib

    for name in names[:-1]:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return _require_train(names[-1])


def _encode(model: Any, texts: list[str], prefix: str, batch_size: int, progress: bool) -> Any:
    from gl_retrieval.embedders.huggingface import encode_with_bar  # the package's one bar

    return encode_with_bar(
        model,
        [prefix + t for t in texts],
        batch_size=batch_size,
        normalize=True,
        show_progress=progress,
    )


def _cached_base_vectors(
    embedder: Any,
    storage: Any,
    handle: Any,
    corpus: Corpus,
    cache_dir: str | None,
    say: Progress,
    show: bool,
) -> np.ndarray:
    """The base embedder's (unit) vectors of every chunk; cached on disk when ``cache_dir``."""
    key = hashlib.sha256(
        (json.dumps(embedder.fingerprint(), sort_keys=True) + corpus.fingerprint()).encode()
    ).hexdigest()[:24]
    try:  # the embedded store keeps the base model's vectors: no re-embedding
        vecs = storage.stored_vectors(handle, corpus.chunk_ids)
    except KeyError:
        vecs = None
    if vecs is not None:
        vecs = np.asarray(vecs, np.float32)
        if vecs is not None and vecs.shape[0] == len(corpus):
            say(f"base corpus vectors: {len(vecs)} read from the index")
            return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    path = Path(cache_dir).expanduser() / f"base-vectors-{key}.npy" if cache_dir else None
    if path is not None and path.exists():
        say(f"base corpus vectors: cached ({path.name})")
        return np.load(path)
    t0 = time.perf_counter()
    vecs = np.asarray(embedder.embed_documents(corpus.texts, show_progress=show), np.float32)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs = vecs / np.maximum(norms, 1e-12)
    say(f"base corpus vectors: {len(vecs)} chunks embedded in {time.perf_counter() - t0:.0f}s")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.npy")
        np.save(tmp, vecs)
        os.replace(tmp, path)
    return vecs


def _fmt(metrics: dict[str, dict[str, float]] | None) -> str:
    if not metrics:
        return "-"
    return ", ".join(f"{mode} nDCG@10 {m['nDCG@10']:.4f}" for mode, m in metrics.items())


# -- the run -------------------------------------------------------------------------------------


def _training_threads(cfg: PipelineConfig) -> int:
    """``runtime.threads`` when set, else every core: training is a batch job that owns the
    machine while it runs, not a query path that must leave room for neighbours (on 2 cores,
    the query default of 1 thread made an epoch take twice as long)."""
    return resolve_threads(cfg.runtime.threads, bulk=True)


def finetune(
    config: PipelineConfig | str | os.PathLike[str],
    *,
    train: str | os.PathLike[str],
    output: str | os.PathLike[str],
    dev: str | os.PathLike[str] | None = None,
    options: FinetuneOptions | None = None,
    progress: Progress | None = None,
) -> FinetuneResult:
    """Fine-tune the config's embedder (or reranker) on ``train``; select on dev; write ``output``.

    Args:
        config: The app's config (a path or a :class:`PipelineConfig`); its index must exist.
        train: Training data: a BEIR directory / qrels ``.tsv``, or a ``.jsonl`` of triples
            (see :mod:`gl_retrieval.train.data`).
        output: Directory to write; must be empty unless ``overwrite`` or ``resume``.
        dev: Dev data in the same layouts; default: a seeded split of ``train``.
        options: Hyperparameters and run settings.
        progress: Called with one-line progress messages (the CLI prints them to stderr).

    Returns:
        A :class:`FinetuneResult`; ``result.config_change`` is the YAML to use the new model.

    Raises:
        TrainingError: a bad hyperparameter, a non-empty ``output``, nothing to resume.
        TrainingDataError: malformed data, unknown ids, duplicates, dev overlapping train.
        IndexNotFoundError / IndexMismatchError: the config's index is missing or stale.
    """
    from gl_retrieval.pipeline import RetrievalPipeline

    opts = (options or FinetuneOptions()).resolved()  # the stage's defaults filled in
    opts.check()
    say = progress or (lambda _msg: None)
    cfg = config if isinstance(config, PipelineConfig) else load_config(config)
    if opts.stage == "embedder" and not isinstance(cfg.embedder, HuggingFaceEmbedderConfig):
        raise TrainingError(
            f"fine-tuning needs a sentence-transformers embedder (provider: huggingface), but "
            f"the config's embedder is provider {cfg.embedder.provider!r}"
        )
    if opts.stage == "reranker" and cfg.reranker is None:
        raise TrainingError(
            "--stage reranker needs a `reranker` section in the config (the model to fine-tune)"
        )
    # Everything that can be checked without the index is, first; and nothing is written to
    # --output until the index and the data have loaded, so a failed start leaves it as it was.
    check_data_path(train)
    if dev is not None:
        check_data_path(dev)
    out = Path(output).expanduser().resolve()
    _check_output(out, opts)
    run_dir = out / RUN_DIR
    if opts.resume:
        saved = json.loads((run_dir / "options.json").read_text(encoding="utf-8"))
        diff = opts.differs(saved)
        if diff:
            shown = ", ".join(f"{k}: run {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise TrainingError(f"--resume with different settings than the run ({shown})")

    _seed_everything(opts.seed)
    pipe = RetrievalPipeline(cfg)
    stages = pipe.stages()  # loads the index: refuses a missing or mismatched one
    handle = stages.handle
    corpus = load_corpus(handle, lexical=True)
    say(f"index: {len(corpus.doc_ids)} documents, {len(corpus)} chunks")

    data = load_training_data(train, corpus)
    notes: list[str] = []
    if dev is not None:
        dev_data = load_training_data(dev, corpus)
        check_disjoint(data, dev_data)
        train_data = data
        notes.append(f"dev set: {dev_data.source} ({len(dev_data.queries)} queries)")
    else:
        train_data, dev_data, note = split_dev(data, dev_size=opts.dev_size, seed=opts.seed)
        notes.append(note)
    say(notes[-1])
    opts.check_data(len(train_data))
    _prepare_output(out, opts)
    run_dir.mkdir(exist_ok=True)
    if not opts.resume:
        atomic_json(run_dir / "options.json", opts.to_dict())

    embedder = pipe.embedder
    threads = _training_threads(cfg)
    apply_torch_threads(threads)  # after the embedder load, which applies the query default
    say(f"torch threads: {threads}")
    base_vectors = None
    if opts.stage == "embedder" or opts.relative_margin is not None:
        base_vectors = _cached_base_vectors(
            embedder, pipe.storage, handle, corpus, opts.cache_dir, say, opts.show_progress
        )

    pairs_file = run_dir / "train_pairs.jsonl"
    mining_stats: dict[str, Any] | None = None
    if opts.resume and pairs_file.exists():
        train_data = _pairs_from_jsonl(pairs_file, train_data)
        mining_stats = json.loads((run_dir / "mining.json").read_text(encoding="utf-8"))
    else:
        if opts.n_negatives > 0:
            t0 = time.perf_counter()
            train_data, stats = mine_hard_negatives(
                train_data,
                stages=stages,
                corpus=corpus,
                embedder=embedder,
                chunk_vectors=base_vectors,
                options=opts.mining(),
            )
            mining_stats = stats.to_dict()
            say(
                f"mined {stats.negatives} hard negatives for {stats.pairs} pairs with the "
                f"{cfg.retriever.mode} retriever in {time.perf_counter() - t0:.0f}s "
                f"({stats.dropped_by_margin} dropped by the margin, {stats.short} pairs short)"
            )
        _pairs_to_jsonl(pairs_file, train_data)
        atomic_json(run_dir / "mining.json", mining_stats)

    if opts.stage == "reranker":
        from gl_retrieval.train.reranker import train_reranker

        return train_reranker(
            cfg,
            out=out,
            stages=stages,
            embedder=embedder,
            train_data=train_data,
            dev_data=dev_data,
            corpus=corpus,
            opts=opts,
            notes=notes,
            mining=mining_stats,
            say=say,
        )
    return _train_embedder(
        cfg,
        out=out,
        embedder=embedder,
        train_data=train_data,
        dev_data=dev_data,
        corpus=corpus,
        base_vectors=base_vectors,  # type: ignore[arg-type]
        opts=opts,
        notes=notes,
        mining=mining_stats,
        say=say,
    )


def _train_embedder(
    cfg: PipelineConfig,
    *,
    out: Path,
    embedder: Any,
    train_data: TrainingData,
    dev_data: TrainingData,
    corpus: Corpus,
    base_vectors: np.ndarray,
    opts: FinetuneOptions,
    notes: list[str],
    mining: dict[str, Any] | None,
    say: Progress,
) -> FinetuneResult:
    import torch

    st = _require_train("sentence_transformers")
    _require_train("accelerate")
    from transformers import TrainerCallback

    from gl_retrieval.models import resolve_model_path
    from gl_retrieval.models.devices import resolve_device

    ecfg: HuggingFaceEmbedderConfig = cfg.embedder  # type: ignore[assignment]
    prefixes = resolve_prefixes(
        ecfg.model,
        preset=ecfg.preset,
        query_prefix=ecfg.query_prefix,
        document_prefix=ecfg.document_prefix,
    )
    run_dir = out / RUN_DIR
    history_file = run_dir / "dev_history.json"
    dev_q = list(dev_data.queries.values())
    eval_time = [0.0]  # dev evaluations inside trainer.train(), reported apart from training

    # -- before: the base model as the pipeline runs it (stored prefixes, its own vectors) ------
    if opts.resume and history_file.exists():
        history: list[dict[str, Any]] = json.loads(history_file.read_text(encoding="utf-8"))
    else:
        qv = np.asarray(embedder.embed_queries(dev_q), np.float32)
        qv /= np.maximum(np.linalg.norm(qv, axis=1, keepdims=True), 1e-12)
        before = dev_metrics(qv, base_vectors, dev_data, corpus, cfg.retriever)
        history = [{"epoch": 0.0, "step": 0, "dev": before}]
        atomic_json(history_file, history)
    before = history[0]["dev"]
    say(f"dev before: {_fmt(before)}")
    primary = "hybrid" if cfg.retriever.mode == "hybrid" else "dense"

    device = resolve_device(ecfg.device)
    path = resolve_model_path(ecfg.model, revision=ecfg.revision, role="embedder")
    model = st.SentenceTransformer(path, device=device, revision=ecfg.revision)
    if opts.max_seq_length is not None:
        model.max_seq_length = opts.max_seq_length
    elif ecfg.max_length is not None:
        model.max_seq_length = ecfg.max_length

    dataset = build_dataset(
        train_data, query_prefix=prefixes.query, document_prefix=prefixes.document
    )
    losses = _first_module(
        "sentence_transformers.sentence_transformer.losses", "sentence_transformers.losses"
    )
    samplers = _first_module(
        "sentence_transformers.base.sampler", "sentence_transformers.training_args"
    )
    if opts.loss == "cached_mnrl":
        loss = losses.CachedMultipleNegativesRankingLoss(
            model, mini_batch_size=opts.mini_batch_size
        )
    else:
        loss = losses.MultipleNegativesRankingLoss(model)

    args = st.SentenceTransformerTrainingArguments(
        **training_arguments(
            opts, output_dir=out / CHECKPOINTS, examples=len(dataset), device=device
        ),
        batch_sampler=samplers.BatchSamplers.NO_DUPLICATES,
        dataloader_drop_last=True,
    )

    def evaluate_now(m: Any) -> dict[str, dict[str, float]]:
        was_training = m.training
        t0 = time.perf_counter()
        with torch.no_grad():
            qv = _encode(m, dev_q, prefixes.query, ecfg.batch_size, False)
            cv = _encode(m, corpus.texts, prefixes.document, ecfg.batch_size, opts.show_progress)
        if was_training:
            m.train()
        res = dev_metrics(qv, cv, dev_data, corpus, cfg.retriever)
        eval_time[0] += time.perf_counter() - t0
        say(f"dev eval in {time.perf_counter() - t0:.0f}s")
        return res

    def primary_of(entry: dict[str, Any]) -> float:
        return float(entry["dev"][primary]["nDCG@10"])

    def record(m: Any, state: Any) -> None:
        if any(h["step"] == state.global_step for h in history):
            return
        metrics = evaluate_now(m)
        entry = {"epoch": round(float(state.epoch or 0), 3), "step": state.global_step}
        entry["dev"] = metrics
        keep_epoch(
            entry,
            history=history,
            score=primary_of,
            out=out,
            save=lambda d: m.save(str(d)),
            history_file=history_file,
        )
        say(f"dev after epoch {entry['epoch']:g} (step {entry['step']}): {_fmt(metrics)}")

    class DevSelection(TrainerCallback):
        def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            last = state.global_step >= state.max_steps
            if opts.eval_each_epoch or last:
                record(kw["model"], state)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            record(kw["model"], state)

    trainer = st.SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=loss,
        callbacks=[DevSelection(), progress_callback(say)],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints loss dicts on stdout
    resume_from = None
    if opts.resume:
        ck = last_checkpoint(out)
        resume_from = str(ck) if ck is not None else None
        say(f"resuming from {ck.name}" if ck else "no complete checkpoint yet: starting over")
    say(
        f"training {len(dataset)} pairs ({dataset.num_columns - 2} negatives each), "
        f"batch {opts.batch_size}, {opts.epochs} epoch(s), lr {opts.lr:g}, on {device}"
    )
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.perf_counter() - t0
    steps = int(trainer.state.global_step)

    # -- the best epoch becomes the output model ------------------------------------------------
    _, best = best_saved(history, primary_of)
    model_dir = out / MODEL_DIR
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(out / BEST_DIR, model_dir)
    after = best["dev"] if best else None
    improved = bool(after) and after[primary]["nDCG@10"] > before[primary]["nDCG@10"]
    if after and not improved:
        notes.append(
            f"no epoch beat the base model on dev {primary} nDCG@10 "
            f"({before[primary]['nDCG@10']:.4f}); keep the base model"
        )
    if not opts.keep_checkpoints:
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)

    from gl_retrieval.train.report import config_change, write_outputs

    change = config_change(cfg, stage="embedder", model_dir=model_dir, family=prefixes)
    result = FinetuneResult(
        output=out,
        model_dir=model_dir,
        stage="embedder",
        before=before,
        after=after,
        best_epoch=best["epoch"] if best else None,
        history=history,
        config_change=change,
        notes=notes,
        train_seconds=train_seconds,
        eval_seconds=eval_time[0],
        steps=steps,
        improved=improved,
    )
    write_outputs(
        result,
        cfg=cfg,
        train_data=train_data,
        dev_data=dev_data,
        corpus=corpus,
        opts=opts,
        mining=mining,
        base={"model": ecfg.model, "revision": ecfg.revision, "prefixes": prefixes.__dict__},
        max_seq_length=int(model.max_seq_length),
    )
    return result
