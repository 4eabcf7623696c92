"""``backend: auto``: the selection table on fake CPUs, the parity check and its fallback, and
what validate --json and the manifest say about the choice."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from gl_retrieval.config import RerankerConfig, parse_config
from gl_retrieval.models import parity
from gl_retrieval.models.backend_choice import (
    AUTO_ENV,
    PREFERENCES,
    TIERS,
    BackendChoice,
    CpuInfo,
    choose_backend,
    detect_cpu,
    resolve_backend,
)
from gl_retrieval.models.parity import (
    ParityVerdict,
    judge_scores,
    judge_vectors,
    parity_pairs,
    parity_texts,
    read_verdict,
    settle,
    write_verdict,
)

ALL = {"torch", "onnx", "openvino"}
SAPPHIRE_RAPIDS = CpuInfo(
    "Intel(R) Xeon(R) Platinum 8480+",
    frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"}),
)
ZEN4 = CpuInfo("AMD EPYC 9B14", frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}))
ICE_LAKE = CpuInfo("Intel(R) Xeon(R) Gold 6338", frozenset({"avx2", "avx512f", "avx512_vnni"}))
ALDER_LAKE = CpuInfo("12th Gen Intel(R) Core(TM) i7-12700", frozenset({"avx2", "avx_vnni"}))
ZEN3 = CpuInfo("AMD EPYC 7B13", frozenset({"avx2", "fma"}))
OLD = CpuInfo("Intel(R) Xeon(R) CPU E5-2670", frozenset({"avx"}))


@pytest.mark.parametrize(
    ("cpu", "role", "expected", "tier"),
    [
        (SAPPHIRE_RAPIDS, "reranker", ("openvino", "auto", "bf16"), "amx"),
        (SAPPHIRE_RAPIDS, "embedder", ("openvino", "auto", "bf16"), "amx"),
        (ZEN4, "reranker", ("openvino", "auto", "bf16"), "avx512_vnni+bf16"),
        (ZEN4, "embedder", ("openvino", "auto", "bf16"), "avx512_vnni+bf16"),
        (ICE_LAKE, "reranker", ("openvino", "int8", "int8"), "avx512_vnni"),
        (ICE_LAKE, "embedder", ("onnx", "int8", "int8"), "avx512_vnni"),
        (ALDER_LAKE, "reranker", ("onnx", "int8", "int8"), "avx_vnni"),
        (ZEN3, "reranker", ("onnx", "int8", "int8"), "avx2"),
        (ZEN3, "embedder", ("onnx", "int8", "int8"), "avx2"),
        (OLD, "reranker", ("torch", "auto", "fp32"), "baseline"),
    ],
)
def test_selection_table_for_fake_cpus(
    cpu: CpuInfo, role: str, expected: tuple[str, str, str], tier: str
) -> None:
    c = choose_backend(role, cpu=cpu, installed=ALL, cuda=False)
    assert (c.backend, c.quantization, c.precision) == expected
    assert c.tier == tier and c.cpu_model == cpu.model and c.notices == ()
    assert c.reason.startswith(f"CPU tier {tier} ({cpu.model})")
    assert c.fallbacks[-1:] == (("torch", "auto"),) or c.backend == "torch"
    d = c.to_dict()
    assert d["configured"] == "auto" and d["flags"] == sorted(cpu.flags)


def test_every_tier_and_role_has_a_row_ending_in_torch() -> None:
    for role in ("embedder", "reranker"):
        for tier in [t for t, _ in TIERS] + ["cuda"]:
            assert PREFERENCES[role, tier][-1] == ("torch", "auto"), (role, tier)


def test_cuda_means_torch_fp16_and_a_gpu_device_means_torch() -> None:
    c = choose_backend("reranker", cpu=SAPPHIRE_RAPIDS, installed=ALL, cuda=True)
    assert (c.backend, c.precision, c.tier) == ("torch", "fp16", "cuda")
    assert "GPU" in c.reason
    c = choose_backend("embedder", cpu=ZEN3, installed=ALL, cuda=False, device="cuda")
    assert c.backend == "torch"
    # device: cpu ignores the GPU
    c = choose_backend("reranker", cpu=ZEN3, installed=ALL, cuda=True, device="cpu")
    assert (c.backend, c.quantization) == ("onnx", "int8")


def test_missing_runtime_falls_back_with_a_one_line_notice() -> None:
    c = choose_backend("reranker", cpu=ZEN3, installed={"torch"}, cuda=False)
    assert c.backend == "torch" and c.precision == "fp32"
    assert len(c.notices) == 1 and "\n" not in c.notices[0]
    assert "onnxruntime is not installed" in c.notices[0]
    assert "pip install 'gl-retrieval[onnx]'" in c.notices[0]
    assert c.notices[0].endswith("using torch")
    # openvino missing on an AMX box: onnx int8 is next, after two notices
    c = choose_backend("reranker", cpu=SAPPHIRE_RAPIDS, installed={"torch", "onnx"}, cuda=False)
    assert (c.backend, c.quantization) == ("onnx", "int8")
    assert len(c.notices) == 2 and all("openvino is not installed" in n for n in c.notices)


def test_quantization_narrows_the_candidates() -> None:
    c = choose_backend("reranker", cpu=ZEN4, installed=ALL, cuda=False, quantization="none")
    assert (c.backend, c.quantization, c.precision) == ("openvino", "none", "fp32")
    c = choose_backend("reranker", cpu=ZEN4, installed=ALL, cuda=False, quantization="int8")
    assert c.precision == "int8" and all(q == "int8" for b, q in c.fallbacks if b != "torch")


def test_detect_cpu_reads_proc_cpuinfo(tmp_path: Path) -> None:
    f = tmp_path / "cpuinfo"
    f.write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
        "flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 sse\n\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    cpu = detect_cpu(f)
    assert cpu.model == "Intel(R) Xeon(R) Platinum 8480+" and cpu.tier == "amx"
    assert "sse" not in cpu.flags and "amx_int8" in cpu.flags
    elsewhere = detect_cpu(tmp_path / "missing")  # numpy's feature table
    assert elsewhere.tier in {t for t, _ in TIERS if t != "amx"}


def test_explicit_backend_is_kept_and_the_env_pins_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    c = resolve_backend("reranker", backend="torch", quantization="auto")
    assert (c.backend, c.reason, c.configured) == ("torch", "configured", "torch")
    c = resolve_backend("reranker", backend="onnx", quantization="int8")
    assert (c.backend, c.precision, c.configured) == ("onnx", "int8", "onnx")
    monkeypatch.setenv(AUTO_ENV, "onnx:int8")
    c = resolve_backend("reranker", backend="auto", quantization="auto")
    assert (c.backend, c.quantization, c.fallbacks) == ("onnx", "int8", (("torch", "auto"),))
    assert c.reason == f"{AUTO_ENV}=onnx:int8"
    monkeypatch.setenv(AUTO_ENV, "tensorflow")
    with pytest.raises(ValueError, match="expected torch, onnx or openvino"):
        resolve_backend("reranker", backend="auto", quantization="auto")


def test_auto_is_the_schema_default() -> None:
    cfg = parse_config({"embedder": {"model": "m"}, "reranker": {"model": "r"}})
    assert cfg.embedder.backend == "auto" and cfg.reranker is not None
    assert cfg.reranker.backend == "auto"
    assert RerankerConfig(model="r", device="cuda").backend == "auto"  # auto then picks torch
    assert parse_config({"reranker": {"model": "r", "backend": "torch"}}).reranker.backend == (
        "torch"
    )


# -- parity ------------------------------------------------------------------------------------


def test_fixed_inputs_are_fixed_and_varied() -> None:
    pairs, texts = parity_pairs(), parity_texts()
    assert pairs == parity_pairs() and len(pairs) == 60 and len(texts) == 65
    assert len({q for q, _ in pairs}) == 5 and len({p for _, p in pairs}) > 30


def test_judge_scores_and_vectors() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=60)
    ok = judge_scores(ref, ref + 0.01 * rng.normal(size=60), backend="onnx", precision="int8")
    assert ok.ok and ok.checked and ok.spearman is not None and ok.spearman > 0.99
    bad = judge_scores(ref, rng.normal(size=60), backend="onnx", precision="int8")
    assert not bad.ok and "Spearman" in bad.why
    # one score far off: the ranks barely move, the max difference catches it
    off = ref.copy()
    off[0] += 0.5 * (ref.max() - ref.min())
    assert not judge_scores(ref, off, backend="onnx", precision="int8").ok
    flat = judge_scores(np.full(60, 0.5), rng.normal(size=60), backend="onnx", precision="int8")
    assert flat.ok and not flat.checked and "not judged" in flat.note
    v = rng.normal(size=(10, 8))
    assert judge_vectors(v, v + 1e-4, backend="onnx", precision="int8").ok
    w = v.copy()
    w[3] = rng.normal(size=8)
    verdict = judge_vectors(v, w, backend="onnx", precision="int8")
    assert not verdict.ok and "min cosine" in verdict.why


def _choice(*candidates: tuple[str, str]) -> BackendChoice:
    (b, q), rest = candidates[0], candidates[1:]
    return BackendChoice(
        role="reranker", backend=b, quantization=q, precision="int8" if q == "int8" else "bf16",
        reason="CPU tier amx (fake)", tier="amx", cpu_model="fake", flags=("amx_bf16", "amx_int8"),
        fallbacks=rest,
    )  # fmt: skip


def test_parity_failure_moves_to_the_next_backend_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    choice = _choice(("openvino", "int8"), ("openvino", "auto"), ("torch", "auto"))
    seen = []

    def check(c: BackendChoice) -> ParityVerdict:  # a fake export: int8 disagrees, bf16 agrees
        seen.append((c.backend, c.precision))
        if c.precision == "int8":
            return judge_scores([0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0], backend=c.backend,
                                precision=c.precision)  # fmt: skip
        return judge_scores([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.01], backend=c.backend,
                            precision=c.precision)  # fmt: skip

    with caplog.at_level(logging.WARNING, logger="gl_retrieval"):
        got = settle(choice, check=check)
    assert seen == [("openvino", "int8"), ("openvino", "bf16")]
    assert (got.backend, got.quantization) == ("openvino", "auto")
    assert got.parity is not None and got.parity["ok"]
    assert (
        len(got.notices) == 1
        and "failed its parity check (against fp32: Spearman" in got.notices[0]
    )
    assert got.notices[0].endswith("using openvino bf16")
    assert "failed the parity check" in got.reason
    assert any("openvino int8 failed its parity check" in r.message for r in caplog.records)
    # everything disagrees: torch, which needs no check
    got = settle(choice, check=lambda c: judge_scores([0, 1, 2], [2, 1, 0], backend=c.backend,
                                                      precision=c.precision))  # fmt: skip
    assert got.backend == "torch" and len(got.notices) == 2


def test_verdict_is_cached_and_rejudged_with_todays_tolerance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v = judge_scores([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.1], backend="onnx", precision="int8")
    assert v.ok
    write_verdict(tmp_path, v)
    assert read_verdict(tmp_path, "int8") == v and read_verdict(tmp_path, "bf16") is None
    monkeypatch.setattr(parity, "RERANK_MAX_DIFF", 0.01)
    assert not read_verdict(tmp_path, "int8").ok  # type: ignore[union-attr]


# -- through the reranker (a real export of a tiny cross-encoder) -------------------------------


@pytest.fixture
def tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from gl_retrieval.models.stand_in import make_tiny_cross_encoder

    monkeypatch.setenv("GL_RETRIEVAL_CACHE", str(tmp_path / "cache"))
    return make_tiny_cross_encoder(tmp_path / "tiny", stand_in=False, seed=3)


def test_reranker_auto_checks_the_int8_export_and_falls_back_to_torch(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from gl_retrieval.retrieval.rerankers import build_reranker

    monkeypatch.setenv(AUTO_ENV, "onnx:int8")  # this CPU's table may name openvino
    monkeypatch.setattr(parity, "RERANK_MIN_SPEARMAN", 1.01)  # no export can agree
    monkeypatch.setattr(parity, "MIN_SPREAD", 0.0)  # judge even this random model's scores
    rr = build_reranker(RerankerConfig(model=str(tiny_model), batch_size=7), threads=1)
    assert rr.backend_choice.backend == "onnx"  # before loading: the table's choice
    with caplog.at_level(logging.WARNING, logger="gl_retrieval"):
        scores = rr.score_pairs([("what is bm25?", "a ranking function"), ("q", "p")])
    assert len(scores) == 2
    c = rr.backend_choice
    assert (c.backend, c.precision) == ("torch", "fp32")
    assert "onnx int8 failed its parity check" in c.notices[0]
    assert any("failed its parity check" in r.message for r in caplog.records)
    # The verdict is cached beside the export: the next process does not score again.
    from gl_retrieval.models.exports import ExportSpec, find_export

    export = find_export(ExportSpec(str(tiny_model), "reranker", "onnx", "int8"))
    assert export is not None
    cached = read_verdict(export, "int8")
    assert cached is not None and cached.n == 60 and not cached.ok


def test_stand_in_reranker_is_not_judged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gl_retrieval.models.stand_in import make_tiny_cross_encoder
    from gl_retrieval.retrieval.rerankers import build_reranker

    monkeypatch.setenv("GL_RETRIEVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(AUTO_ENV, "onnx:int8")
    model = make_tiny_cross_encoder(tmp_path / "stand-in", seed=4)
    rr = build_reranker(RerankerConfig(model=str(model), batch_size=5), threads=1)
    rr.warmup()
    c = rr.backend_choice
    assert c.backend == "onnx" and c.parity is not None
    assert c.parity["checked"] is False and "stand-in" in c.parity["note"]


# -- what the surfaces show ---------------------------------------------------------------------


def test_validate_json_and_the_manifest_show_the_choice(small_config: dict[str, Any]) -> None:
    from gl_retrieval import RetrievalPipeline
    from gl_retrieval.cli import app

    path = Path(small_config["storage"]["persist_dir"]).parent / "pipeline.yaml"
    path.write_text(yaml.safe_dump(small_config))
    r = CliRunner().invoke(app, ["validate", str(path), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    emb = out["backends"]["embedder"]
    assert emb["configured"] == "auto" and emb["backend"] == "torch"  # pinned by conftest
    assert emb["reason"] == f"{AUTO_ENV}=torch" and "tier" in emb and "cpu_model" in emb
    assert out["backends"]["reranker"] is None and out["embedder"]["backend"] == "auto"
    pipe = RetrievalPipeline.from_config(small_config)
    pipe.index(show_progress=False)
    manifest = pipe.storage.read_manifest()
    assert manifest.embedder["backend"] == "torch"
    assert manifest.embedder["backend_choice"]["configured"] == "auto"
    assert manifest.embedder["backend_choice"]["reason"] == f"{AUTO_ENV}=torch"
    explicit = {**small_config, "embedder": {**small_config["embedder"], "backend": "torch"}}
    got = RetrievalPipeline.from_config(explicit).backends()["embedder"]
    assert got is not None and (got["configured"], got["reason"]) == ("torch", "configured")


def test_models_pull_builds_the_auto_export_and_keeps_json_pure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OpenVINO int8 export (nncf prints progress bars on stdout) under `models pull --json`:
    stdout is the JSON document alone, with what auto chose."""
    from gl_retrieval.cli import app
    from gl_retrieval.models.stand_in import make_tiny_cross_encoder

    monkeypatch.setenv("GL_RETRIEVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(AUTO_ENV, "openvino:int8")
    model = make_tiny_cross_encoder(tmp_path / "stand-in", seed=5)
    cfg = {
        "embedder": {"model": "packaged:all-MiniLM-L6-v2", "backend": "torch"},
        "reranker": {"model": str(model)},
    }
    path = tmp_path / "pull.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(app, ["models", "pull", str(path), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    rr = out["backends"]["reranker"]
    assert (rr["backend"], rr["precision"], rr["configured"]) == ("openvino", "int8", "auto")
    assert rr["parity"]["checked"] is False  # a stand-in: not judged
    assert out["backends"]["embedder"]["configured"] == "torch"


def test_an_export_that_cannot_be_built_moves_to_the_next_backend() -> None:
    """A model the exports do not support (a Dense module, say) must not break the default."""
    from gl_retrieval.errors import ModelLoadError

    def check(c: BackendChoice) -> ParityVerdict:
        raise ModelLoadError("m has a 'Dense' module: onnx/openvino exports support ...\nmore")

    got = settle(_choice(("onnx", "int8"), ("torch", "auto")), check=check)
    assert got.backend == "torch"
    assert "could not be built or loaded (m has a 'Dense' module" in got.notices[0]
    assert "\n" not in got.notices[0]
