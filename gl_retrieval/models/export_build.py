"""Building one export: torch → ONNX (→ int8) (→ OpenVINO IR, → int8). Needs torch.

Imported only by :func:`.exports.ensure_export` when nothing is cached, so the query
path of an exported backend never imports it (or torch).
"""

from __future__ import annotations

import json
import shutil
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

from gl_retrieval._deps import require
from gl_retrieval.errors import ModelLoadError
from gl_retrieval.models.quiet import apply_quiet

__all__ = ["build_export", "describe_embedder", "describe_reranker"]

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_ACTIVATIONS = {"Sigmoid": "sigmoid", "Identity": "identity"}


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def describe_embedder(source: Path, model_cfg: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """Pooling, normalisation, dimension and max length of a sentence-transformers model."""
    modules = _read_json(source / "modules.json") or [
        {"type": "Transformer", "path": ""},
        {"type": "Pooling", "path": "1_Pooling"},
    ]
    pooling, normalize = "mean", False
    for m in modules:
        kind = m.get("type", "").rsplit(".", 1)[-1]
        if kind == "Transformer":
            continue
        if kind == "Pooling":
            pc = _read_json(source / m.get("path", "") / "config.json") or {}
            if pc.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif pc.get("pooling_mode_max_tokens"):
                pooling = "max"
            elif pc.get("pooling_mode_mean_tokens", True):
                pooling = "mean"
            else:
                raise ModelLoadError(f"unsupported pooling in {source}: {pc}")
        elif kind == "Normalize":
            normalize = True
        else:
            raise ModelLoadError(
                f"{source} has a {kind!r} module: onnx/openvino exports support Transformer, "
                "Pooling and Normalize only; use backend: torch for this model"
            )
    sbert = _read_json(source / "sentence_bert_config.json") or {}
    max_len = sbert.get("max_seq_length") or min(
        int(tokenizer.model_max_length), int(model_cfg.get("max_position_embeddings", 512))
    )
    return {
        "pooling": pooling,
        "model_normalizes": normalize,
        "dimension": int(model_cfg["hidden_size"]),
        "max_length": int(max_len),
    }


def describe_reranker(model_cfg: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """Labels, activation and max length of a cross-encoder (as sentence-transformers reads it)."""
    num_labels = len(model_cfg.get("id2label") or {}) or int(model_cfg.get("num_labels", 1))
    st = model_cfg.get("sentence_transformers") or {}
    path = st.get("activation_fn") or model_cfg.get("sbert_ce_default_activation_function")
    if path:
        name = str(path).rsplit(".", 1)[-1]
        if name not in _ACTIVATIONS:
            raise ModelLoadError(f"unsupported cross-encoder activation {path!r} for onnx/openvino")
        activation = _ACTIVATIONS[name]
    else:
        activation = "sigmoid" if num_labels == 1 else "identity"
    model_max = int(tokenizer.model_max_length)
    if model_max > 100_000:  # transformers' "no limit" sentinel
        model_max = int(model_cfg.get("max_position_embeddings", 512))
    return {"num_labels": num_labels, "activation": activation, "model_max_length": model_max}


def _calibration_texts() -> tuple[list[str], list[str]]:
    data = resources.files("gl_retrieval") / "data"
    docs = [
        (json.loads(line)["title"] + " " + json.loads(line)["text"])
        for line in (data / "demo_corpus.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    queries = [q["query"] for q in json.loads((data / "demo_queries.json").read_text())]
    return queries, docs


def build_export(
    spec: Any, tdir: Path, source: Path, out: Path, *, copied: tuple[str, ...]
) -> dict[str, Any]:
    """Export ``spec`` from the transformer at ``tdir`` into ``out``; return facts for meta.json."""
    torch = require("torch")
    transformers = require("transformers")
    apply_quiet()
    tok = transformers.AutoTokenizer.from_pretrained(str(tdir))
    if not tok.is_fast:
        raise ModelLoadError(f"{spec.model!r} has no fast tokenizer: onnx/openvino need one")
    tok.save_pretrained(str(out))  # tokenizer.json is what the torch-free runtime reads
    for name in copied:
        for base in (source, tdir):
            if (base / name).exists():
                shutil.copy(base / name, out / name)
                break
    model_cfg = json.loads((tdir / "config.json").read_text())
    auto = (
        transformers.AutoModel
        if spec.kind == "embedder"
        else transformers.AutoModelForSequenceClassification
    )
    model = auto.from_pretrained(str(tdir), attn_implementation="eager").eval()
    names = [n for n in tok.model_input_names if n in _INPUTS]
    info = (
        describe_embedder(source, model_cfg, tok)
        if spec.kind == "embedder"
        else describe_reranker(model_cfg, tok)
    )
    info.update(
        {
            "input_names": names,
            "pad_id": int(tok.pad_token_id if tok.pad_token_id is not None else 0),
            "model_type": model_cfg.get("model_type"),
        }
    )

    class _Wrapper(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            kw = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kw["token_type_ids"] = token_type_ids
            return self.inner(**kw)[0]

    order = ["input_ids", "attention_mask"] + (
        ["token_type_ids"] if "token_type_ids" in names else []
    )
    if spec.kind == "embedder":
        dummy = tok(["a short text", "a somewhat longer text to pad"], padding=True)
    else:
        dummy = tok(
            ["a query", "another query"], ["a passage", "a longer passage to pad"], padding=True
        )
    args = tuple(torch.tensor(dummy[n], dtype=torch.long) for n in order)
    onnx_path = out / "model.onnx"
    out_name = "last_hidden_state" if spec.kind == "embedder" else "logits"
    axes = {n: {0: "batch", 1: "sequence"} for n in order}
    axes[out_name] = {0: "batch", 1: "sequence"} if spec.kind == "embedder" else {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about constant-folded shape checks
        torch.onnx.export(
            _Wrapper(model),
            args,
            str(onnx_path),
            input_names=order,
            output_names=[out_name],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    info["input_names"] = order
    if spec.backend == "onnx" and spec.weights == "int8":
        quant = require("onnxruntime.quantization", extra="onnx")
        fp32 = out / "fp32.onnx"
        onnx_path.rename(fp32)
        # Per-channel weights, MatMul only: per-tensor (or quantized embedding Gathers) cost
        # cosine 0.90 against fp32 on MiniLM; this keeps >= 0.98 and is faster.
        quant.quantize_dynamic(
            str(fp32),
            str(onnx_path),
            weight_type=quant.QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
        )
        fp32.unlink()
        info["int8_method"] = "onnxruntime quantize_dynamic (per-channel QInt8 MatMul weights)"
    if spec.backend == "openvino":
        ov = require("openvino", extra="openvino")
        ov_model = ov.convert_model(str(onnx_path))
        if spec.weights == "int8":
            ov_model = _nncf_int8(ov_model, tok, spec.kind, order)
            info["int8_method"] = "nncf.quantize (static int8, calibrated on the demo corpus)"
        ov.save_model(ov_model, str(out / "model.xml"), compress_to_fp16=False)
        onnx_path.unlink()
    return info


def _nncf_int8(ov_model: Any, tok: Any, kind: str, order: list[str]) -> Any:
    nncf = require("nncf", extra="openvino")
    np = require("numpy")
    queries, docs = _calibration_texts()
    if kind == "embedder":
        encs = [tok(t, truncation=True, max_length=256) for t in queries + docs]
    else:
        encs = [
            tok(queries[i % len(queries)], d, truncation=True, max_length=256)
            for i, d in enumerate(docs)
        ]
    items = [{n: np.asarray([e[n]], dtype=np.int64) for n in order} for e in encs]
    return nncf.quantize(
        ov_model,
        nncf.Dataset(items),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(items),
    )
