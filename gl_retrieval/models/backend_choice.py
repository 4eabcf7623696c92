"""``backend: auto``: which runtime and precision run a model, chosen from the CPU.

The choice is a table, :data:`PREFERENCES`: a role (embedder, reranker) and a CPU capability
tier (the first row of :data:`TIERS` whose flags the CPU has) map to an ordered list of
``(backend, quantization)`` candidates, measured with ``bench/backends.py``
(docs/performance.md). The first candidate whose runtime is installed wins; the ones after it
are the fallbacks that the parity check (:mod:`.parity`) moves to when a quantized export
disagrees with fp32. A GPU (CUDA) comes first and means torch (fp16 there, as
``quantization: auto`` does); a runtime that is not installed is skipped with a one-line
notice, down to torch, which every candidate list ends in.

:func:`choose_backend` is pure (tests give it fake CPUs); :func:`resolve_backend` reads this
machine (``/proc/cpuinfo``, else numpy's CPU feature table) once per process.
``GL_RETRIEVAL_AUTO_BACKEND=torch`` (or ``onnx:int8``, ``openvino:auto``...) pins what ``auto``
means, for a CI job or a test suite; an explicit ``backend:`` in the config always wins.

Example:
    >>> cpu = CpuInfo("Intel Xeon Platinum 8480+", frozenset({"avx2", "amx_int8", "amx_bf16"}))
    >>> c = choose_backend("reranker", cpu=cpu, installed={"onnx", "openvino"}, cuda=False)
    >>> c.backend, c.quantization, c.precision, c.tier
    ('openvino', 'auto', 'bf16', 'amx')
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import platform
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "AUTO_ENV",
    "PREFERENCES",
    "RUNTIME_MODULES",
    "TIERS",
    "BackendChoice",
    "Candidate",
    "CpuInfo",
    "choose_backend",
    "cuda_present",
    "detect_cpu",
    "installed_runtimes",
    "precision_of",
    "resolve_backend",
]

log = logging.getLogger("gl_retrieval")

Role = Literal["embedder", "reranker"]
#: ``(backend, quantization)`` as the config spells them.
Candidate = tuple[str, str]

#: Pins what ``backend: auto`` resolves to (``torch``, ``onnx``, ``onnx:int8``, ...).
AUTO_ENV = "GL_RETRIEVAL_AUTO_BACKEND"

#: CPU capability tiers, best first: a CPU is in the first tier whose flags it all has.
#: Flag names as Linux's /proc/cpuinfo writes them.
TIERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("amx", frozenset({"amx_int8"})),
    ("avx512_vnni+bf16", frozenset({"avx512_vnni", "avx512_bf16"})),
    ("avx512_vnni", frozenset({"avx512_vnni"})),
    ("avx_vnni", frozenset({"avx_vnni"})),
    ("avx2", frozenset({"avx2"})),
    ("baseline", frozenset()),
)

_TORCH: Candidate = ("torch", "auto")
_ONNX_INT8: Candidate = ("onnx", "int8")
_OV_INT8: Candidate = ("openvino", "int8")
_OV_AUTO: Candidate = ("openvino", "auto")  # OpenVINO's default: bf16 where the CPU has it

#: ``(role, tier)`` -> candidates, best first. Measured with bench/backends.py (CPU time, one
#: thread; docs/performance.md, "backend: auto"). The embedder avoids OpenVINO's static int8:
#: calibrated on the demo corpus, its vectors drifted on longer texts (min cosine 0.970 against
#: fp32 on SciFact abstracts, where bf16 kept 0.99997), and an index keeps its vectors.
PREFERENCES: dict[tuple[str, str], tuple[Candidate, ...]] = {
    ("reranker", "cuda"): (_TORCH,),
    ("embedder", "cuda"): (_TORCH,),
    # Sapphire Rapids (issue 26): openvino int8 4.95x, openvino bf16 3.98x, onnx int8 2.52x.
    # bf16 first: both meet the AMX target, and on the box below int8 moved a trained
    # reranker's nDCG@10 by 0.010 where bf16 stayed within 0.005 of fp32.
    ("reranker", "amx"): (_OV_AUTO, _OV_INT8, _ONNX_INT8, _TORCH),
    ("embedder", "amx"): (_OV_AUTO, _ONNX_INT8, _TORCH),
    # AMD EPYC with AVX-512 VNNI and bf16, no AMX (this project's box): reranker openvino bf16
    # 0.41-0.43x torch's CPU time with reranked nDCG@10 -0.001 against fp32; openvino int8
    # 0.26-0.27x but +0.010 (beyond 0.005); onnx int8 0.38x. Embedder openvino bf16 0.45x,
    # onnx int8 0.47x.
    ("reranker", "avx512_vnni+bf16"): (_OV_AUTO, _OV_INT8, _ONNX_INT8, _TORCH),
    ("embedder", "avx512_vnni+bf16"): (_OV_AUTO, _ONNX_INT8, _TORCH),
    # Cascade Lake / Ice Lake class, and Alder Lake's AVX-VNNI: VNNI int8 kernels, no bf16
    # units (not measured here: the int8 rows follow the VNNI box above).
    ("reranker", "avx512_vnni"): (_OV_INT8, _ONNX_INT8, _TORCH),
    ("embedder", "avx512_vnni"): (_ONNX_INT8, _TORCH),
    ("reranker", "avx_vnni"): (_ONNX_INT8, _OV_INT8, _TORCH),
    ("embedder", "avx_vnni"): (_ONNX_INT8, _TORCH),
    # Zen 3 (docs/performance.md): onnx int8 1.64x (rerank), 1.69x (ingest); openvino int8 0.98x.
    ("reranker", "avx2"): (_ONNX_INT8, _TORCH),
    ("embedder", "avx2"): (_ONNX_INT8, _TORCH),
    ("reranker", "baseline"): (_TORCH,),
    ("embedder", "baseline"): (_TORCH,),
}

#: The module that tells whether a backend's runtime is installed.
RUNTIME_MODULES = {"onnx": "onnxruntime", "openvino": "openvino", "torch": "torch"}


@dataclass(frozen=True)
class CpuInfo:
    """A CPU as the choice sees it: its model name and its feature flags (lower case)."""

    model: str
    flags: frozenset[str] = frozenset()

    @property
    def tier(self) -> str:
        """The first row of :data:`TIERS` whose flags this CPU has."""
        return next(name for name, need in TIERS if need <= self.flags)

    def to_dict(self) -> dict[str, Any]:
        """What a benchmark records of the machine: the model, the :data:`REPORTED_FLAGS` it
        has, and the cores."""
        flags = [f for f in REPORTED_FLAGS if f in self.flags]
        return {"model": self.model, "flags": flags, "cores": os.cpu_count()}


#: Flags the choice and the benchmark report (the rest of /proc/cpuinfo's are not kept).
REPORTED_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
#: numpy's CPU feature names (the fallback off Linux) -> /proc/cpuinfo's.
_NUMPY_FLAGS = {
    "AVX2": "avx2",
    "FMA3": "fma",
    "AVX512F": "avx512f",
    "AVX512BW": "avx512bw",
    "AVX512VL": "avx512vl",
    "AVX512VNNI": "avx512_vnni",
    "AVX512BF16": "avx512_bf16",
}


def detect_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """This machine's CPU: /proc/cpuinfo on Linux, else numpy's CPU feature table (which knows
    AVX2, AVX-512, VNNI and bf16 but not AMX)."""
    model = platform.processor() or platform.machine() or "unknown"
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in (platform.processor(), platform.machine(), "unknown"):
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    if not flags:
        flags = _numpy_flags()
    return CpuInfo(model=model, flags=frozenset(f for f in flags if f in REPORTED_FLAGS))


def _numpy_flags() -> set[str]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats
    except ImportError:  # numpy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as feats
        except ImportError:
            return set()
    return {ours for theirs, ours in _NUMPY_FLAGS.items() if feats.get(theirs)}


def installed_runtimes() -> frozenset[str]:
    """Backends whose runtime is importable (found, not imported)."""
    return frozenset(b for b, mod in RUNTIME_MODULES.items() if _found(mod))


def _found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def cuda_present() -> bool:
    """Whether torch would find a CUDA GPU, without importing torch when it is not loaded yet:
    an NVIDIA driver on this machine and a device left visible (``CUDA_VISIBLE_DEVICES``)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return bool(torch.cuda.is_available())
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    driver = Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()
    return driver and _found("torch")


def precision_of(backend: str, quantization: str, *, cpu: CpuInfo, cuda: bool = False) -> str:
    """What a ``(backend, quantization)`` computes in on ``cpu``: fp16, bf16, int8 or fp32.

    Example:
        >>> zen3 = CpuInfo("AMD EPYC 7B13", frozenset({"avx2"}))
        >>> precision_of("openvino", "auto", cpu=zen3), precision_of("onnx", "int8", cpu=zen3)
        ('fp32', 'int8')
    """
    if quantization == "int8":
        return "int8"
    if backend == "torch":
        return "fp16" if cuda and quantization == "auto" else "fp32"
    if backend == "openvino" and quantization == "auto":
        bf16 = {"amx_bf16", "avx512_bf16"} & cpu.flags
        return "bf16" if bf16 else "fp32"
    return "fp32"


@dataclass(frozen=True)
class BackendChoice:
    """What runs a model, and why: the backend and quantization as the config spells them, the
    precision that means on this CPU, the fallbacks left, and the notices given on the way."""

    role: str
    backend: str
    quantization: str
    precision: str
    reason: str
    tier: str
    cpu_model: str
    flags: tuple[str, ...]
    configured: str = "auto"
    #: Candidates after this one, for the parity check to move to.
    fallbacks: tuple[Candidate, ...] = ()
    notices: tuple[str, ...] = ()
    #: The parity verdict (``parity.json`` of the export) once checked, else None.
    parity: dict[str, Any] | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """As JSON data (validate --json, /v1/info, the manifest)."""
        return {
            "backend": self.backend,
            "quantization": self.quantization,
            "precision": self.precision,
            "configured": self.configured,
            "reason": self.reason,
            "tier": self.tier,
            "cpu_model": self.cpu_model,
            "flags": list(self.flags),
            "fallbacks": [f"{b}:{q}" for b, q in self.fallbacks],
            "notices": list(self.notices),
            "parity": self.parity,
        }

    def next(self, why: str) -> BackendChoice:
        """The next fallback (a quantized export failed its parity check: ``why``). Exports
        are chosen only for the CPU, so a torch fallback runs on the CPU too."""
        if not self.fallbacks:
            raise ValueError("no fallback left")
        (backend, quant), rest = self.fallbacks[0], self.fallbacks[1:]
        precision = precision_of(backend, quant, cpu=CpuInfo(self.cpu_model, frozenset(self.flags)))
        notice = f"{self.role}: {self.backend} {self.precision} {why}; using {backend} {precision}"
        return replace(
            self,
            backend=backend,
            quantization=quant,
            precision=precision,
            reason=f"{self.reason}; {self.backend} {self.precision} failed the parity check",
            fallbacks=rest,
            notices=(*self.notices, notice),
            parity=None,
        )


def choose_backend(
    role: str,
    *,
    cpu: CpuInfo,
    installed: frozenset[str] | set[str],
    cuda: bool,
    device: str = "auto",
    quantization: str = "auto",
) -> BackendChoice:
    """What ``backend: auto`` means for ``role`` on ``cpu`` with the ``installed`` runtimes.

    A GPU device (``device: cuda``/``mps``, or ``auto`` with CUDA present) means torch: the
    exports run on the CPU. Otherwise the CPU's tier picks a row of :data:`PREFERENCES`; its
    first installed candidate wins, and each one skipped for a missing runtime adds a notice.
    ``quantization: none`` keeps to fp32 candidates, ``int8`` to int8 ones (torch last).

    Example:
        >>> zen3 = CpuInfo("AMD EPYC 7B13", frozenset({"avx2", "fma"}))
        >>> c = choose_backend("embedder", cpu=zen3, installed={"torch"}, cuda=False)
        >>> c.backend, c.notices[0][:53]
        ('torch', 'embedder: backend auto prefers onnx int8 on this CPU ')
    """
    flags = tuple(sorted(cpu.flags))
    gpu = device in ("cuda", "mps") or (device == "auto" and cuda)
    tier = "cuda" if gpu else cpu.tier
    if gpu:
        on = "cuda" if device in ("auto", "cuda") else device
        reason = f"a GPU ({on}) runs torch; the onnx/openvino exports are CPU-only"
        candidates: tuple[Candidate, ...] = (_TORCH,)
    else:
        candidates = _within(PREFERENCES[role, tier], quantization)
        reason = f"CPU tier {tier} ({cpu.model})"
        if quantization != "auto":
            reason += f", quantization {quantization}"
    notices = []
    for i, (backend, quant) in enumerate(candidates):
        if backend == "torch" or backend in installed:
            return BackendChoice(
                role=role,
                backend=backend,
                quantization=quant,
                precision=precision_of(backend, quant, cpu=cpu, cuda=gpu and on == "cuda"),
                reason=reason + (": first choice" if i == 0 else ": first installed choice"),
                tier=tier,
                cpu_model=cpu.model,
                flags=flags,
                fallbacks=candidates[i + 1 :],
                notices=tuple(notices),
            )
        module = RUNTIME_MODULES[backend]
        notices.append(
            f"{role}: backend auto prefers {backend} {precision_of(backend, quant, cpu=cpu)} "
            f"on this CPU ({tier}), but {module} is not installed "
            f"(pip install 'gl-retrieval[{backend}]'); using "
            + ("torch" if candidates[i + 1 :] == (_TORCH,) else "the next choice")
        )
    raise AssertionError("unreachable: every candidate list ends in torch")  # pragma: no cover


def _within(candidates: tuple[Candidate, ...], quantization: str) -> tuple[Candidate, ...]:
    """The candidates a configured ``quantization`` allows (fp32 for none, int8 for int8)."""
    if quantization == "auto":
        return candidates
    out: list[Candidate] = []
    for backend, quant in candidates:
        if backend == "torch":
            cand = (backend, "none" if quantization == "none" else "auto")
        elif quantization == "int8":
            cand = (backend, quant) if quant == "int8" else None
        else:
            cand = (backend, "none") if quant != "int8" else None
        if cand is not None and cand not in out:
            out.append(cand)
    return tuple(out)


def _pinned(role: str, value: str, *, cpu: CpuInfo, cuda: bool, device: str) -> BackendChoice:
    backend, _, quant = value.strip().partition(":")
    if backend not in RUNTIME_MODULES or quant not in ("", "auto", "none", "int8"):
        raise ValueError(
            f"{AUTO_ENV}={value!r}: expected torch, onnx or openvino, optionally with "
            ":auto, :none or :int8 (e.g. onnx:int8)"
        )
    quant = quant or "auto"
    return BackendChoice(
        role=role,
        backend=backend,
        quantization=quant,
        precision=precision_of(backend, quant, cpu=cpu, cuda=cuda and device != "cpu"),
        reason=f"{AUTO_ENV}={value}",
        tier=cpu.tier,
        cpu_model=cpu.model,
        flags=tuple(sorted(cpu.flags)),
        fallbacks=() if backend == "torch" else (_TORCH,),
    )


@functools.lru_cache(maxsize=1)
def _machine() -> tuple[CpuInfo, frozenset[str], bool]:
    return detect_cpu(), installed_runtimes(), cuda_present()


def resolve_backend(
    role: str, *, backend: str, quantization: str, device: str = "auto"
) -> BackendChoice:
    """The choice for a config section: ``backend: auto`` resolved on this machine (once per
    process, one notice per missing runtime), or the configured backend as it is.

    Example:
        >>> resolve_backend("reranker", backend="torch", quantization="auto").reason
        'configured'
    """
    cpu, installed, cuda = _machine()
    if backend != "auto":
        return BackendChoice(
            role=role,
            backend=backend,
            quantization=quantization,
            precision=precision_of(backend, quantization, cpu=cpu, cuda=cuda and device != "cpu"),
            reason="configured",
            tier=cpu.tier,
            cpu_model=cpu.model,
            flags=tuple(sorted(cpu.flags)),
            configured=backend,
        )
    pinned = os.environ.get(AUTO_ENV, "").strip()
    if pinned:
        return _pinned(role, pinned, cpu=cpu, cuda=cuda, device=device)
    choice = choose_backend(
        role, cpu=cpu, installed=installed, cuda=cuda, device=device, quantization=quantization
    )
    for line in choice.notices:
        _notice_once(line)
    return choice


@functools.lru_cache(maxsize=64)
def _notice_once(line: str) -> None:
    log.warning("notice: %s", line)
