"""`--stage reranker`: fine-tune a cross-encoder, measured on dev through the pipeline's own
two stages, keeping the best epoch.

1. **Starting point**: ``--base-model`` or the config's ``reranker.model``: a cross-encoder, or
   any encoder (a bi-encoder such as ``packaged:all-MiniLM-L6-v2``), which then gets a fresh,
   untrained one-label head (said in a note).
2. **Dev candidates, once**: the configured first stage's ``retriever.top_k`` candidates for
   every dev query (:meth:`TwoStage.candidates`); they do not change while the reranker trains.
3. **Before**: the first stage alone, and the first stage + the configured reranker when that
   is a trained cross-encoder (not a stand-in, not a fresh head).
4. **Train** with ``CrossEncoderTrainer``: ``bce`` (labelled pairs, ``pos_weight``), ``mnrl``
   (softmax over the positive, the mined and in-batch negatives) or ``listnet`` (each query's
   positive and negatives as one list); negatives mined from the first stage
   (:mod:`gl_retrieval.train.mining`), optionally with random ones.
5. **After each epoch**: the same candidates reranked by the model being trained, through
   :meth:`TwoStage.pairs` / :meth:`TwoStage.results` (the one path every surface uses); the
   best epoch by reranked nDCG@10 is kept. If no epoch beats the first stage alone, the result
   says so (``improved: false``) and no config change is suggested.
6. **Score blend**: with ``first_stage_weight`` w > 0 (the option, the config's
   ``reranker.first_stage_weight``, or 0.5 for a fresh head, noted) each evaluation also orders
   the same scores as the pipeline's blend does (``blended``), and that selects the epoch.

Metrics: nDCG@10, MRR@10 and Recall@top_k (the candidate depth: reranking cannot change it).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from gl_retrieval.config import PipelineConfig
from gl_retrieval.errors import TrainingError
from gl_retrieval.train.options import (
    FRESH_HEAD_BLEND,
    RERANKER_LR,
    FinetuneOptions,
    progress_callback,
    training_arguments,
)

__all__ = ["DevReranking", "build_pair_dataset", "start_model", "train_reranker"]

PRIMARY = "nDCG@10"


def start_model(model: str, *, revision: str | None) -> tuple[str, bool, str | None]:
    """Resolve a reranker starting point: ``(path, is_cross_encoder, note)``.

    A checkpoint whose architecture is a one-label ``...ForSequenceClassification`` is a
    cross-encoder and keeps its head; anything else (a bi-encoder, a plain encoder) gets a
    fresh one-label head, and the note says so. A stand-in's head is random (noted too).
    """
    from gl_retrieval._deps import require
    from gl_retrieval.models import PACKAGED_ROLES, resolve_model_path
    from gl_retrieval.models.stand_in import is_stand_in

    role = "reranker"
    if model.startswith("packaged:"):
        role = PACKAGED_ROLES.get(model.removeprefix("packaged:"), "reranker")
    path = resolve_model_path(model, revision=revision, role=role)
    transformers = require("transformers", extra="train")
    try:
        hf = transformers.AutoConfig.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as e:
        raise TrainingError(
            f"reranker starting point {model!r} is not a transformers model directory or hub "
            f"id ({e}); give a cross-encoder or an encoder checkpoint"
        ) from e
    archs = list(getattr(hf, "architectures", None) or [])
    labels = int(getattr(hf, "num_labels", 0) or 0)
    cross = any(a.endswith("ForSequenceClassification") for a in archs) and labels == 1
    if is_stand_in(path):
        return path, False, f"starting point {model} is a stand-in: random weights, random head"
    if cross:
        return path, True, None
    kind = "a bi-encoder" if role == "embedder" or _is_sentence_transformer(path) else "not"
    what = f"{kind} cross-encoder" if kind == "not" else kind
    return (
        path,
        False,
        f"starting point {model} is {what} ({', '.join(archs) or 'no architecture'}): it "
        "starts with a fresh, untrained one-label head; only training makes it a reranker",
    )


def _is_trained(configured: Any, rcfg: Any, opts: FinetuneOptions, start_is_cross: bool) -> bool:
    """True when the configured reranker is a trained cross-encoder (worth measuring)."""
    if configured.stand_in:
        return False
    if opts.base_model is None:
        return start_is_cross
    from gl_retrieval.errors import GLRetrievalError

    try:
        return start_model(rcfg.model, revision=rcfg.revision)[1]
    except GLRetrievalError:
        return False


def _is_sentence_transformer(path: str) -> bool:
    return (Path(path) / "modules.json").is_file()


class DevReranking:
    """The dev queries' first-stage candidates, computed once, and their metrics with any
    reranker, through :class:`~gl_retrieval.retrieval.flow.TwoStage` (no ranking of its own).

    Args:
        stages: The pipeline's :class:`TwoStage` (the configured first stage and reranker).
        embedder: Embeds the dev queries for the first stage.
        dev_data: The dev queries and judgments.
        top_k: Candidates per query (``retriever.top_k``).
    """

    def __init__(self, stages: Any, *, embedder: Any, dev_data: Any, top_k: int) -> None:
        from gl_retrieval.retrieval.flow import check_request

        self.stages = stages
        self.dev = dev_data
        self.qids = list(dev_data.queries)
        texts = [dev_data.queries[q] for q in self.qids]
        self.request = check_request(
            texts, filters=None, top_k=top_k, top_n=top_k, default_top_k=top_k
        )
        vectors = list(embedder.embed_queries(texts)) if stages.needs_vectors else None
        self.candidates = stages.candidates(self.request, vectors)
        self.metrics = ("nDCG@10", "MRR@10", f"Recall@{top_k}")
        self.last_scores: list[float] = []

    def _with(self, reranker: Any) -> Any:
        from gl_retrieval.retrieval.flow import TwoStage

        s = self.stages
        return TwoStage(
            storage=s.storage, handle=s.handle, retriever=s.retriever, reranker=reranker
        )

    def _measure(self, results: list[list[Any]]) -> dict[str, float]:
        from gl_retrieval.eval.metrics import doc_level_ranking, evaluate

        run = {
            qid: doc_level_ranking(
                (str(h.node.ref_doc_id or h.node.node_id), h.score) for h in hits
            )
            for qid, hits in zip(self.qids, results, strict=True)
        }
        return evaluate(run, self.dev.qrels, metrics=self.metrics)

    def first_stage(self) -> dict[str, float]:
        """The first stage alone."""
        two = self._with(None)
        return self._measure(two.results(self.request, self.candidates, None))

    def reranked(self, reranker: Any) -> dict[str, float]:
        """The same candidates reordered by ``reranker`` (a ``CrossEncoderReranker``)."""
        two = self._with(reranker)
        pairs = two.pairs(self.request, self.candidates)
        scores = reranker.score_pairs(pairs, cache=False)  # the model's own scores, every time
        self.last_scores = list(scores)
        return self._measure(two.results(self.request, self.candidates, scores))

    def blended(self, reranker: Any, weight: float) -> dict[str, float]:
        """The last :meth:`reranked` scores, ordered as ``reranker.first_stage_weight`` =
        ``weight`` orders them in the pipeline (no model call)."""
        blend = reranker.model_copy(update={"first_stage_weight": weight})
        two = self._with(blend)
        return self._measure(two.results(self.request, self.candidates, self.last_scores))


def _random_negatives(
    data: Any, corpus: Any, count: int, seed: int
) -> dict[tuple[str, str], list[str]]:
    """``count`` random non-positive documents per pair (seeded), keyed by (qid, positive)."""
    if count == 0:
        return {}
    rng = random.Random(seed)
    docs = corpus.doc_ids
    out: dict[tuple[str, str], list[str]] = {}
    for p in data.pairs:
        judged = set(data.qrels.get(p.qid, {}))
        picked: list[str] = []
        while len(picked) < count:
            d = rng.choice(docs)
            if d not in judged:
                picked.append(corpus.doc_text(d))
        out[(p.qid, p.positive)] = picked
    return out


def build_pair_dataset(
    data: Any, *, loss: str = "bce", corpus: Any = None, random_negatives: int = 0, seed: int = 0
) -> Any:
    """The rows the cross-encoder trainer receives for ``loss``.

    ``bce``: ``query``, ``passage``, ``label`` (1.0 positive, 0.0 negative). ``listnet``:
    ``query``, ``docs``, ``labels`` (the positive first). ``mnrl``: ``query``, ``positive``,
    ``negative_1..n`` (a pair short of negatives repeats its last one). Random negatives
    (``bce``, ``listnet``) are drawn from ``corpus`` besides the mined ones.
    """
    from gl_retrieval._deps import require

    datasets = require("datasets", extra="train")
    rand = (
        _random_negatives(data, corpus, random_negatives, seed)
        if loss != "mnrl" and corpus is not None
        else {}
    )
    if loss == "mnrl":
        n = max((len(p.negatives) for p in data.pairs), default=0)
        cols: dict[str, list[Any]] = {"query": [], "positive": []}
        cols.update({f"negative_{i + 1}": [] for i in range(n)})
        for p in data.pairs:
            cols["query"].append(p.query)
            cols["positive"].append(p.positive)
            negs = list(p.negatives) or [p.positive]
            negs += [negs[-1]] * (n - len(negs))
            for i, neg in enumerate(negs):
                cols[f"negative_{i + 1}"].append(neg)
        return datasets.Dataset.from_dict(cols)
    if loss == "listnet":
        rows: dict[str, list[Any]] = {"query": [], "docs": [], "labels": []}
        for p in data.pairs:
            negs = list(p.negatives) + rand.get((p.qid, p.positive), [])
            rows["query"].append(p.query)
            rows["docs"].append([p.positive, *negs])
            rows["labels"].append([1.0] + [0.0] * len(negs))
        return datasets.Dataset.from_dict(rows)
    rows = {"query": [], "passage": [], "label": []}
    for p in data.pairs:
        rows["query"].append(p.query)
        rows["passage"].append(p.positive)
        rows["label"].append(1.0)
        for neg in [*p.negatives, *rand.get((p.qid, p.positive), [])]:
            rows["query"].append(p.query)
            rows["passage"].append(neg)
            rows["label"].append(0.0)
    return datasets.Dataset.from_dict(rows)


def _loss(st: Any, model: Any, opts: FinetuneOptions, dataset: Any) -> Any:
    import torch

    losses = st.cross_encoder.losses
    if opts.loss == "mnrl":
        return losses.MultipleNegativesRankingLoss(model, num_negatives=opts.random_negatives)
    if opts.loss == "listnet":
        return losses.ListNetLoss(model)
    labels = dataset["label"]
    pos = sum(1 for x in labels if x > 0.5)
    weight = opts.pos_weight if opts.pos_weight is not None else (len(labels) - pos) / max(pos, 1)
    return losses.BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(float(weight)))


def train_reranker(
    cfg: PipelineConfig,
    *,
    out: Path,
    stages: Any,
    embedder: Any,
    train_data: Any,
    dev_data: Any,
    corpus: Any,
    opts: FinetuneOptions,
    notes: list[str],
    mining: dict[str, Any] | None,
    say: Any,
) -> Any:
    """Train, measure each epoch on dev through the two stages, keep the best epoch."""
    from transformers import TrainerCallback

    from gl_retrieval._deps import require
    from gl_retrieval.models.devices import resolve_device
    from gl_retrieval.retrieval.rerankers import CrossEncoderReranker, PairScorer
    from gl_retrieval.train.report import config_change, write_outputs
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

    st = require("sentence_transformers", extra="train")
    require("accelerate", extra="train")
    rcfg = cfg.reranker
    if rcfg is None:
        raise TrainingError("--stage reranker needs a `reranker` section in the config")
    base = opts.base_model or rcfg.model
    revision = rcfg.revision if opts.base_model is None else None
    path, is_cross, note = start_model(base, revision=revision)
    if note:
        notes.append(note)
        say(note)
    if opts.lr is None:
        opts = replace(opts, lr=RERANKER_LR["cross_encoder" if is_cross else "fresh_head"])
    device = resolve_device(rcfg.device)
    max_len = opts.max_seq_length or rcfg.max_length
    weight = rcfg.first_stage_weight if opts.first_stage_weight is None else opts.first_stage_weight
    if opts.first_stage_weight is None and weight == 0 and not is_cross:
        weight = FRESH_HEAD_BLEND
        notes.append(
            f"a fresh head is measured and selected with the score blend first_stage_weight "
            f"{weight:g} (alone, such a reranker stayed below the first stage on SciFact; "
            "docs/finetuning.md); pass --first-stage-weight 0 for the reranker alone"
        )
    kept = "blended" if weight > 0 else "reranked"  # what selects the epoch and says improved
    if weight > 0:
        say(f"dev also measures the score blend (first_stage_weight {weight:g}); it selects")

    # -- dev: the first stage's candidates, once; before training ------------------------------
    top_k = cfg.retriever.top_k
    t_eval = time.perf_counter()
    dev = DevReranking(stages, embedder=embedder, dev_data=dev_data, top_k=top_k)
    run_dir = out / RUN_DIR
    history_file = run_dir / "dev_history.json"
    if opts.resume and history_file.exists():
        history: list[dict[str, Any]] = json.loads(history_file.read_text(encoding="utf-8"))
    else:
        before = {"first_stage": dev.first_stage()}
        configured = stages.reranker
        if configured is not None and _is_trained(configured, rcfg, opts, is_cross):
            # the configured reranker, as the pipeline runs it today
            before["configured_reranker"] = dev.reranked(configured)
        history = [{"epoch": 0.0, "step": 0, "dev": before}]
        atomic_json(history_file, history)
    before = history[0]["dev"]
    eval_seconds = time.perf_counter() - t_eval
    say(f"dev before ({len(dev.qids)} queries, top {top_k}): {_fmt(before)}")

    model = st.CrossEncoder(path, device=device, num_labels=1, max_length=max_len)
    dataset = build_pair_dataset(
        train_data,
        loss=str(opts.loss),
        corpus=corpus,
        random_negatives=opts.random_negatives,
        seed=opts.seed,
    )
    loss = _loss(st, model, opts, dataset)
    args = st.CrossEncoderTrainingArguments(
        **training_arguments(
            opts, output_dir=out / CHECKPOINTS, examples=len(dataset), device=device
        )
    )
    eval_time = [eval_seconds]

    def scorer_of(m: Any) -> CrossEncoderReranker:
        def predict(pairs: list[tuple[str, str]]) -> Any:
            return m.predict(pairs, batch_size=rcfg.batch_size, show_progress_bar=False)

        return CrossEncoderReranker(
            model=str(out / MODEL_DIR),
            top_n=top_k,
            max_length=max_len,
            scorer=PairScorer(predict, max_length=max_len),
        )

    def primary_of(entry: dict[str, Any]) -> float:
        return float(entry["dev"][kept][PRIMARY])

    def record(state: Any) -> None:
        if any(h["step"] == state.global_step for h in history):
            return
        t0 = time.perf_counter()
        was_training = model.training
        rr = scorer_of(model)
        metrics = dev.reranked(rr)
        dev_now = {"first_stage": before["first_stage"], "reranked": metrics}
        if weight > 0:
            dev_now["blended"] = dev.blended(rr, weight)
        if was_training:
            model.train()
        eval_time[0] += time.perf_counter() - t0
        entry: dict[str, Any] = {
            "epoch": round(float(state.epoch or 0), 3),
            "step": state.global_step,
            "dev": dev_now,
        }
        keep_epoch(
            entry,
            history=history,
            score=primary_of,
            out=out,
            save=lambda d: model.save_pretrained(str(d)),
            history_file=history_file,
        )
        say(
            f"dev after epoch {entry['epoch']:g} (step {entry['step']}, eval "
            f"{time.perf_counter() - t0:.0f}s): {_fmt(entry['dev'])}"
        )

    class DevSelection(TrainerCallback):
        def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            last = state.global_step >= state.max_steps
            if opts.eval_each_epoch or last:
                record(state)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            record(state)

    trainer = st.CrossEncoderTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=loss,
        callbacks=[DevSelection(), progress_callback(say)],
    )
    _quiet_printer(trainer)
    resume_from = None
    if opts.resume:
        ck = last_checkpoint(out)
        resume_from = str(ck) if ck is not None else None
    say(
        f"training the reranker ({opts.loss} loss) on {len(dataset)} rows from "
        f"{len(train_data.pairs)} positives, {opts.n_negatives} mined + {opts.random_negatives} "
        f"random negatives each, batch {opts.batch_size}, {opts.epochs} epoch(s), lr "
        f"{opts.lr:g}, max length {max_len}, on {device}"
    )
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - t0

    _, best = best_saved(history, primary_of)
    model_dir = out / MODEL_DIR
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(out / BEST_DIR, model_dir)
    if not opts.keep_checkpoints:
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    after = best["dev"] if best else None
    first = before["first_stage"][PRIMARY]
    new = after[kept][PRIMARY] if after else float("-inf")
    improved = new > first
    if not improved:
        notes.append(
            f"no epoch beat the first stage alone on dev nDCG@10 ({new:.4f} reranked vs "
            f"{first:.4f} without a reranker): this model would make results worse; do not "
            "use it (keep the config as it is)"
        )
    elif "configured_reranker" in before:
        old = before["configured_reranker"][PRIMARY]
        if new <= old:
            notes.append(
                f"the new reranker beats the first stage alone but not the configured reranker "
                f"({new:.4f} vs {old:.4f}); keep the configured one"
            )
    result = FinetuneResult(
        output=out,
        model_dir=model_dir,
        stage="reranker",
        before=before,
        after=after,
        best_epoch=best["epoch"] if best else None,
        history=history,
        config_change=config_change(
            cfg, stage="reranker", model_dir=model_dir, max_length=max_len, blend=weight
        ),
        notes=notes,
        train_seconds=seconds,
        eval_seconds=eval_time[0],
        steps=int(trainer.state.global_step),
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
        base={"model": base, "revision": revision, "prefixes": None, "cross_encoder": is_cross},
        max_seq_length=max_len,
    )
    return result


def _quiet_printer(trainer: Any) -> None:
    """Drop transformers' PrinterCallback: it prints the loss dicts on stdout (our
    :func:`progress_callback` reports them through ``progress`` instead)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def _fmt(dev: dict[str, dict[str, float]]) -> str:
    return ", ".join(
        f"{name} nDCG@10 {m['nDCG@10']:.4f} MRR@10 {m['MRR@10']:.4f}" for name, m in dev.items()
    )
