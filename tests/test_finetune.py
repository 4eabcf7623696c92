"""`gl-retrieval finetune` (gl_retrieval.train): data validation, mining, prefixes, dev selection,
resume after SIGKILL, the output as a pipeline embedder, the reranker stage.

One tiny run is shared by the module: 12 SciFact train queries over a 40-document index (texts
cut to 30 words), the packaged MiniLM with an e5 preset (so prefixes are visible), max_seq_length
64, batch 4, 4 steps. It is started in a subprocess, killed with SIGKILL once its first checkpoint
is complete, and resumed in this process: the resume test and every test that reads the trained
output share that one run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gl_retrieval.errors import IndexMismatchError, TrainingDataError, TrainingError
from tests.conftest import MINILM, ROOT, shared_dataset

N_QUERIES, N_DOCS, WORDS = 12, 40, 30
STEPS = 4


def _write_slice(src: Path, out: Path) -> None:
    rows = [
        line.split("\t")
        for line in (src / "qrels" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    ]
    judged: dict[str, int] = {}
    for q, _, _ in rows:
        judged[q] = judged.get(q, 0) + 1
    multi = [q for q, n in judged.items() if n > 1][:2]  # cover queries with two positives
    qids = multi + [q for q in judged if q not in multi][: N_QUERIES - len(multi)]
    pos = {d for q, d, _ in rows if q in qids}
    docs: dict[str, dict[str, Any]] = {}
    with (src / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:
            o = json.loads(line)
            if o["_id"] in pos or len(docs) < N_DOCS - len(pos - set(docs)):
                words = (o.get("title", "") + " " + o["text"]).split()[:WORDS]
                docs[o["_id"]] = {"_id": o["_id"], "text": " ".join(words)}
            if len(docs) >= N_DOCS and pos <= set(docs):
                break
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    (out / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs.values()))
    queries = {}
    with (src / "queries.jsonl").open(encoding="utf-8") as f:
        for line in f:
            o = json.loads(line)
            queries[o["_id"]] = o
    (out / "queries.jsonl").write_text("".join(json.dumps(queries[q]) + "\n" for q in qids))
    (out / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n"
        + "".join(f"{q}\t{d}\t{s.strip()}\n" for q, d, s in rows if q in qids)
    )


def _config(base: Path, *, persist: str = "index", extra: str = "") -> Path:
    cfg = base / f"cfg-{persist}.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""\
            embedder: {{model: "{MINILM}", preset: e5, max_length: 64, backend: torch}}
            sources: [{{path: data/corpus.jsonl}}]
            chunking: {{chunk_size: 60, chunk_overlap: 0}}
            storage: {{persist_dir: {persist}}}
            """
        )
        + extra,
        encoding="utf-8",
    )
    return cfg


OPTIONS = dict(
    batch_size=4,
    max_steps=STEPS,
    max_seq_length=64,
    negatives=1,
    dev_size=3,
    save_steps=1,
    mine_skip=0,
    show_progress=False,
)

_CHILD = """
import sys
from gl_retrieval.train import FinetuneOptions, finetune
opts = FinetuneOptions(**{options})
finetune(sys.argv[1], train=sys.argv[2], output=sys.argv[3], options=opts)
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from gl_retrieval.pipeline import RetrievalPipeline

    base = tmp_path_factory.mktemp("finetune")
    _write_slice(shared_dataset("scifact"), base / "data")
    cfg = _config(base)
    RetrievalPipeline.from_config(cfg).index()
    return {"base": base, "cfg": cfg, "data": base / "data"}


@pytest.fixture(scope="module")
def trained(env: dict[str, Any]) -> dict[str, Any]:
    """Start the run in a subprocess, SIGKILL it after its first complete checkpoint, resume it
    here (capturing the dataset the trainer receives)."""
    import gl_retrieval.train.trainer as trainer_mod
    from gl_retrieval.train import FinetuneOptions, finetune

    out = env["base"] / "run"
    child = env["base"] / "child.py"
    child.write_text(_CHILD.format(options=repr(OPTIONS)), encoding="utf-8")
    envvars = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen(
        [sys.executable, str(child), str(env["cfg"]), str(env["data"]), str(out)],
        env=envvars,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpt = out / "checkpoints" / "checkpoint-1" / "trainer_state.json"
    deadline = time.monotonic() + 900  # generous: a loaded CI box is slow
    while not ckpt.exists():
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"training subprocess exited early ({proc.returncode}): {err[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint within 900 s")
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = sorted(p.name for p in (out / "checkpoints").iterdir())

    captured: list[Any] = []
    real = trainer_mod.build_dataset

    def spy(*a: Any, **kw: Any) -> Any:
        ds = real(*a, **kw)
        captured.append(ds)
        return ds

    messages: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_mod, "build_dataset", spy)
        result = finetune(
            env["cfg"],
            train=env["data"],
            output=out,
            options=FinetuneOptions(**OPTIONS, resume=True),  # type: ignore[arg-type]
            progress=messages.append,
        )
    return {"result": result, "dataset": captured[0], "messages": messages, "killed": killed_at}


# -- data validation (no model trained) ----------------------------------------------------------


def _corpus() -> Any:
    from gl_retrieval.train.corpus import Corpus

    return Corpus(
        chunk_ids=["a#0", "b#0", "c#0"],
        texts=["alpha text one", "beta text two", "gamma text three"],
        doc_of=["a", "b", "c"],
    )


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_ids_and_texts_resolve(tmp_path: Path) -> None:
    from gl_retrieval.train.data import load_training_data

    rows = [
        {"query": "first question", "positive": "a", "negative": "b"},
        {"query": "second question", "positive": "a free text positive", "negative": {"id": "c"}},
    ]
    data = load_training_data(_jsonl(tmp_path / "t.jsonl", rows), _corpus())
    assert data.pairs[0].positive == "alpha text one" and data.pairs[0].positive_id == "a"
    assert data.pairs[0].negatives == ("beta text two",)
    assert data.pairs[1].positive_id is None and data.pairs[1].negatives == ("gamma text three",)
    assert len(data.sha256) == 64


@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        ([{"query": "q one", "positive": "zz-404"}], "not in the index"),
        ([{"query": "q one", "positive": "a", "negative": "nope"}], "'nope'"),
        ([{"query": "  ", "positive": "a"}], "query is empty"),
        ([{"query": "q one", "positive": ""}], "positive is empty"),
        ([{"query": "q", "positive": "a"}, {"query": "q", "positive": "a"}], "duplicate pair"),
        ([{"query": "q", "positive": "a", "negative": "a"}], "negative is the positive"),
        ([{"query": "q", "positive": "a", "typo": 1}], "unknown key"),
    ],
)
def test_jsonl_refusals(tmp_path: Path, rows: list[dict[str, Any]], needle: str) -> None:
    from gl_retrieval.train.data import load_training_data

    with pytest.raises(TrainingDataError, match=needle):
        load_training_data(_jsonl(tmp_path / "t.jsonl", rows), _corpus())


def _beir(root: Path, qrels: str, split: str = "train") -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "queries.jsonl").write_text(
        '{"_id": "1", "text": "first question"}\n{"_id": "2", "text": "second question"}\n'
    )
    (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return root


def test_beir_refusals(tmp_path: Path) -> None:
    from gl_retrieval.train.data import load_training_data

    ok = load_training_data(_beir(tmp_path / "ok", "1\ta\t1\n2\tb\t1\n2\tc\t0\n"), _corpus())
    assert [(p.qid, p.positive_id) for p in ok.pairs] == [("1", "a"), ("2", "b")]
    with pytest.raises(TrainingDataError, match=r"not in the index.*'zz'"):
        load_training_data(_beir(tmp_path / "unknown", "1\tzz\t1\n"), _corpus())
    with pytest.raises(TrainingDataError, match="duplicate pair"):
        load_training_data(_beir(tmp_path / "dup", "1\ta\t1\n1\ta\t1\n"), _corpus())
    test_split = _beir(tmp_path / "t", "1\ta\t1\n", split="test") / "qrels" / "test.tsv"
    with pytest.raises(TrainingDataError, match="test split"):
        load_training_data(test_split, _corpus())


def test_dev_overlapping_train_is_refused(tmp_path: Path) -> None:
    from gl_retrieval.train.data import check_disjoint, load_training_data

    train = load_training_data(
        _jsonl(tmp_path / "t.jsonl", [{"query": "Shared Q", "positive": "a"}]), _corpus()
    )
    dev = load_training_data(
        _jsonl(tmp_path / "d.jsonl", [{"query": "shared q", "positive": "b"}]), _corpus()
    )
    with pytest.raises(TrainingDataError, match="shares 1 of its 1 queries"):
        check_disjoint(train, dev)


def test_dev_split_is_seeded_disjoint_and_says_how_many(tmp_path: Path) -> None:
    from gl_retrieval.train.data import load_training_data, split_dev

    rows = [{"query": f"question {i}", "positive": "abc"[i % 3]} for i in range(10)]
    data = load_training_data(_jsonl(tmp_path / "t.jsonl", rows), _corpus())
    train, dev, note = split_dev(data, dev_size=3, seed=7)
    again = split_dev(data, dev_size=3, seed=7)[1]
    assert list(dev.queries) == list(again.queries)
    assert not set(dev.queries) & set(train.queries)
    assert len(train.queries) + len(dev.queries) == 10
    assert note == "held out 3 of 10 training queries as dev (seed 7)"
    assert split_dev(data, seed=0)[2].startswith("held out 1 of 10")  # default 10%
    with pytest.raises(TrainingDataError, match="cannot hold out 10"):
        split_dev(data, dev_size=10)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"lr": 0.0}, "lr must be > 0, but got 0.0"),
        ({"lr": -1e-5}, "lr must be > 0"),
        ({"epochs": 0}, "epochs must be > 0"),
        ({"batch_size": 1}, "batch_size must be > 1"),
        ({"negatives": -1}, "negatives must be >= 0"),
        ({"relative_margin": 1.5}, "relative_margin"),
        ({"stage": "reranker", "negatives": 0}, "reranker stage needs negatives >= 1"),
        ({"stage": "reranker", "loss": "cached_mnrl"}, "loss for the reranker must be one of"),
        ({"base_model": "x"}, "base_model and random_negatives are reranker options"),
    ],
)
def test_bad_hyperparameters_name_themselves(kwargs: dict[str, Any], needle: str) -> None:
    from gl_retrieval.train import FinetuneOptions

    with pytest.raises(TrainingError, match=needle):
        FinetuneOptions(**kwargs).check()


def test_batch_larger_than_the_data_is_refused() -> None:
    from gl_retrieval.train import FinetuneOptions

    with pytest.raises(TrainingError, match="batch_size 32 is larger than the 9 training pairs"):
        FinetuneOptions().check_data(9)


def test_cli_bad_lr_exits_2_before_loading_anything(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gl_retrieval.cli import app

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f'embedder: {{model: "{MINILM}"}}\n')
    res = CliRunner().invoke(
        app, ["finetune", str(cfg), "--train", "x.jsonl", "--output", "o", "--lr", "0"]
    )
    assert res.exit_code == 2
    assert "lr must be > 0" in res.output


def test_non_empty_output_needs_overwrite_and_resume_needs_a_run(
    env: dict[str, Any], tmp_path: Path
) -> None:
    from gl_retrieval.train import FinetuneOptions, finetune

    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(TrainingError, match="not empty; pass --overwrite"):
        finetune(env["cfg"], train=env["data"], output=out)
    with pytest.raises(TrainingError, match="no run to resume"):
        finetune(env["cfg"], train=env["data"], output=out, options=FinetuneOptions(resume=True))
    assert (out / "keep.txt").exists()


# -- mining --------------------------------------------------------------------------------------


def test_no_positive_is_ever_mined_as_a_negative(env: dict[str, Any]) -> None:
    from gl_retrieval.config import load_config
    from gl_retrieval.pipeline import RetrievalPipeline
    from gl_retrieval.train.corpus import load_corpus
    from gl_retrieval.train.data import load_training_data
    from gl_retrieval.train.mining import MiningOptions, mine_hard_negatives

    pipe = RetrievalPipeline(load_config(env["cfg"]))
    stages = pipe.stages()
    corpus = load_corpus(stages.handle)
    data = load_training_data(env["data"], corpus)
    # No window, no margin, many negatives: only the positive exclusion stands in the way.
    mined, stats = mine_hard_negatives(
        data,
        stages=stages,
        corpus=corpus,
        embedder=pipe.embedder,
        chunk_vectors=None,
        options=MiningOptions(count=10, skip=0, depth=30, relative_margin=None),
    )
    assert stats.negatives > 0
    for p in mined.pairs:
        positive_texts = {corpus.doc_text(d) for d in data.qrels[p.qid]}
        assert p.negatives and not positive_texts & set(p.negatives), p.qid
    assert any(len(j) > 1 for j in data.qrels.values())  # a multi-positive query is covered


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_dev_metrics_equal_the_pipelines_own_retrieval_scored_by_the_eval_code(
    env: dict[str, Any], mode: str
) -> None:
    """The dev evaluator re-implements the first stage in numpy, for speed: it must agree with
    what the pipeline retrieves for the same queries, scored by gl_retrieval.eval.metrics."""
    from gl_retrieval.config import load_config
    from gl_retrieval.eval.metrics import doc_level_ranking, evaluate
    from gl_retrieval.pipeline import RetrievalPipeline
    from gl_retrieval.train.corpus import load_corpus
    from gl_retrieval.train.data import load_training_data
    from gl_retrieval.train.evaluate import DEV_METRICS, dev_metrics

    cfg = load_config(env["cfg"])
    cfg = cfg.model_copy(update={"retriever": cfg.retriever.model_copy(update={"mode": mode})})
    pipe = RetrievalPipeline(cfg)
    corpus = load_corpus(pipe.stages().handle, lexical=True)
    data = load_training_data(env["data"], corpus)
    qv = np.asarray(pipe.embedder.embed_queries(list(data.queries.values())), np.float32)
    cv = np.asarray(pipe.embedder.embed_documents(corpus.texts), np.float32)
    got = dev_metrics(qv, cv, data, corpus, cfg.retriever, modes=(mode,))[mode]

    run = {
        qid: doc_level_ranking((h.doc_id, h.score) for h in pipe.retrieve(text, top_k=100))
        for qid, text in data.queries.items()
    }
    want = evaluate(run, data.qrels, metrics=DEV_METRICS)
    assert got == pytest.approx(want, abs=1e-6), (got, want)


# -- the shared run --------------------------------------------------------------------------------


def test_resume_after_sigkill_continues_from_the_last_checkpoint(trained: dict[str, Any]) -> None:
    result = trained["result"]
    assert trained["killed"] and all(k.startswith("checkpoint-") for k in trained["killed"])
    assert any(m.startswith("resuming from checkpoint-") for m in trained["messages"])
    assert result.steps == STEPS
    assert not (result.output / "checkpoints").exists()  # removed after success


def test_prefixes_reach_training(trained: dict[str, Any]) -> None:
    ds = trained["dataset"]
    assert ds.column_names == ["anchor", "positive", "negative_1"]
    assert all(a.startswith("query: ") for a in ds["anchor"])
    assert all(p.startswith("passage: ") for p in ds["positive"])
    assert all(n.startswith("passage: ") for n in ds["negative_1"])
    assert "preset: e5" in trained["result"].config_change


def test_dev_selection_keeps_the_best_epoch_and_writes_the_record(
    trained: dict[str, Any],
) -> None:
    result = trained["result"]
    hist = result.history
    assert hist[0]["step"] == 0 and hist[0]["dev"] == result.before
    trained_entries = [h for h in hist if h["step"] > 0]
    best = max(trained_entries, key=lambda h: h["dev"]["hybrid"]["nDCG@10"])
    assert result.after == best["dev"] and best.get("saved")
    for mode in ("dense", "hybrid"):
        assert set(result.after[mode]) == {"nDCG@10", "MRR@10", "Recall@100"}
    record = json.loads((result.output / "training.json").read_text())
    assert record["base"]["model"] == MINILM and "revision" in record["base"]
    assert len(record["train"]["sha256"]) == 64
    assert record["hyperparameters"]["lr"] == 2e-5
    assert record["dev_before"] == result.before and record["dev_after"] == result.after
    assert record["dev"]["queries"] == 3
    assert record["dev"]["source"].split(" ")[0].endswith("train.tsv")  # never a test split
    assert (result.output / "report.md").read_text().startswith("# Fine-tuning report")
    assert (result.output / "report.png").stat().st_size > 0
    assert "gl-retrieval finetune" in (result.model_dir / "README.md").read_text()


def test_output_loads_as_an_embedder_and_the_old_index_is_refused(
    env: dict[str, Any], trained: dict[str, Any]
) -> None:
    from gl_retrieval.config import load_config
    from gl_retrieval.pipeline import RetrievalPipeline

    result = trained["result"]
    assert "must be rebuilt" in result.config_change
    old = load_config(env["cfg"])
    emb = old.embedder.model_copy(update={"model": str(result.model_dir)})
    with pytest.raises(IndexMismatchError):
        RetrievalPipeline(old.model_copy(update={"embedder": emb})).warmup()
    new_store = old.storage.model_copy(update={"persist_dir": env["base"] / "index-ft"})
    pipe = RetrievalPipeline(old.model_copy(update={"embedder": emb, "storage": new_store}))
    pipe.index()
    assert pipe.embedder.query_prefix == "query: "
    hits = pipe.retrieve(
        next(iter(json.loads(line)["text"] for line in (env["data"] / "queries.jsonl").open()))
    )
    assert hits


def _fake_dev(mp: pytest.MonkeyPatch, deltas: list[float]) -> None:
    """Make each reranked dev evaluation (the configured reranker's first, then each epoch's)
    return the first stage's metrics plus the next delta, after running the real path (so it
    is exercised); deterministic selection."""
    from gl_retrieval.train import reranker as rmod

    real, real_blend = rmod.DevReranking.reranked, rmod.DevReranking.blended
    left = list(deltas)
    last: list[dict[str, float]] = []

    def fake(self: Any, reranker: Any) -> dict[str, float]:
        measured = real(self, reranker)
        if not left:
            return measured
        d = left.pop(0)
        last[:] = [{k: v + d if k.startswith("nDCG") else v for k, v in self.first_stage().items()}]
        return last[0]

    def fake_blend(self: Any, reranker: Any, weight: float) -> dict[str, float]:
        real_blend(self, reranker, weight)
        return last[0]  # the blend "measures" what the epoch's reranking did

    mp.setattr(rmod.DevReranking, "reranked", fake)
    mp.setattr(rmod.DevReranking, "blended", fake_blend)


def _reranker(model: Path) -> str:
    return f"reranker: {{model: '{model}', top_n: 3, backend: torch}}\n"


RERANK = dict(batch_size=4, dev_size=3, max_seq_length=64, negatives=1, show_progress=False)


def test_reranker_stage_measures_dev_through_the_two_stages_and_keeps_the_best_epoch(
    env: dict[str, Any], tiny_cross_encoder: Path
) -> None:
    from gl_retrieval.train import FinetuneOptions, finetune
    from gl_retrieval.train.reranker import DevReranking

    cfg = _config(env["base"], extra=_reranker(tiny_cross_encoder))
    seen: list[int] = []
    with pytest.MonkeyPatch.context() as mp:
        _fake_dev(mp, [0.0, 0.10, 0.05])  # epoch 1 beats the first stage, epoch 2 less so
        real_init = DevReranking.__init__

        def spy(self: Any, *a: Any, **kw: Any) -> None:
            real_init(self, *a, **kw)
            seen.append(len(self.candidates))

        mp.setattr(DevReranking, "__init__", spy)
        result = finetune(
            cfg,
            train=env["data"],
            output=env["base"] / "rerank",
            options=FinetuneOptions(
                stage="reranker",
                epochs=2,
                first_stage_weight=0.5,
                **RERANK,  # type: ignore[arg-type]
            ),
        )
    assert seen == [3]  # candidates computed once, for the 3 dev queries
    fs = result.before["first_stage"]  # type: ignore[index]
    assert set(fs) == {"nDCG@10", "MRR@10", "Recall@20"}  # top_k: the candidate depth
    assert "configured_reranker" in result.before  # an unmarked cross-encoder counts as trained
    assert [h["step"] > 0 for h in result.history] == [False, True, True]
    assert result.best_epoch == 1.0 and result.improved is True
    assert result.after["reranked"]["nDCG@10"] == pytest.approx(fs["nDCG@10"] + 0.10)  # type: ignore[index]
    assert result.history[1]["saved"] and not result.history[2].get("saved")
    assert "max_length: 64" in result.config_change
    assert "first_stage_weight: 0.5" in result.config_change
    assert set(result.after) == {"first_stage", "reranked", "blended"}  # type: ignore[arg-type]
    tj = json.loads((result.output / "training.json").read_text())
    assert tj["improved"] is True and tj["best_epoch"] == 1.0 and tj["dev_before"] == result.before
    assert tj["hyperparameters"]["lr"] == 2e-5  # a trained cross-encoder start: the gentle lr
    assert "| before | 0 | 0 | first_stage |" in (result.output / "report.md").read_text()
    from gl_retrieval.config import RerankerConfig
    from gl_retrieval.retrieval.rerankers import build_reranker

    rr = build_reranker(RerankerConfig(model=str(result.model_dir), top_n=2, max_length=64))
    rr.warmup()


def test_reranker_that_beats_nothing_says_so_and_json_is_pure(
    env: dict[str, Any], tiny_cross_encoder: Path
) -> None:
    """Also: a bi-encoder (the packaged MiniLM) starts a reranker with a fresh head, noted."""
    from transformers import AutoConfig
    from typer.testing import CliRunner

    from gl_retrieval.cli import app
    from gl_retrieval.train.reranker import start_model

    assert start_model(str(tiny_cross_encoder), revision=None)[1] is True
    cfg = _config(env["base"], extra=_reranker(tiny_cross_encoder))
    args = ["finetune", str(cfg), "--train", str(env["data"]), "--stage", "reranker"]
    args += ["--max-steps", "1", "--batch-size", "4", "--dev-size", "3", "--negatives", "1"]
    args += ["--max-seq-length", "64", "--overwrite"]
    runner = CliRunner()
    start = ["--base-model", "packaged:all-MiniLM-L6-v2"]
    with pytest.MonkeyPatch.context() as mp:
        _fake_dev(mp, [0.0, -0.2])
        res = runner.invoke(app, [*args, *start, "--output", str(env["base"] / "r2"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # stdout is one JSON document, nothing else
    assert out["improved"] is False and out["stage"] == "reranker"
    assert out["dev_before"]["first_stage"]["nDCG@10"] > out["dev_after"]["reranked"]["nDCG@10"]
    assert any("no epoch beat the first stage alone" in n for n in out["notes"])
    assert any("bi-encoder" in n and "fresh, untrained one-label head" in n for n in out["notes"])
    assert "trainer: loss" in res.stderr  # the trainer's logs went to stderr
    tj = json.loads((env["base"] / "r2" / "training.json").read_text())
    assert tj["base"] == {
        "model": "packaged:all-MiniLM-L6-v2",
        "revision": None,
        "prefixes": None,
        "cross_encoder": False,
    }
    assert tj["hyperparameters"]["lr"] == 2e-4  # a fresh head: the higher default lr
    assert any("score blend first_stage_weight 0.5" in n for n in out["notes"])
    assert set(out["dev_after"]) == {"first_stage", "reranked", "blended"}
    hf = AutoConfig.from_pretrained(out["model_dir"])
    assert hf.architectures == ["BertForSequenceClassification"] and hf.num_labels == 1
    with pytest.MonkeyPatch.context() as mp:
        _fake_dev(mp, [0.0, -0.2])
        res = runner.invoke(
            app, [*args, "--first-stage-weight", "0.3", "--output", str(env["base"] / "r3")]
        )
    assert res.exit_code == 0, res.output
    assert "change the config" not in res.stdout
    assert "Not an improvement on dev" in res.stdout
    report = (env["base"] / "r3" / "report.md").read_text()
    assert "## Not an improvement" in report and "## Use it" not in report
