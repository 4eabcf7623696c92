"""One progress-bar helper (``gl_retrieval._progress``): where it shows, and that a notebook
without ipywidgets gets a text bar, never tqdm's "IProgress not found" warning."""

from __future__ import annotations

import ast
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gl_retrieval
from gl_retrieval import _progress
from gl_retrieval._progress import in_notebook, make_bar, quiet_notebook_tqdm

_TQDM_NOTEBOOK_MODULES = ("tqdm.auto", "tqdm.autonotebook", "tqdm.notebook")


def _tqdm_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    from tqdm.std import TqdmWarning

    return [str(w.message) for w in caught if issubclass(w.category, TqdmWarning)]


@pytest.fixture
def notebook_without_widgets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A Jupyter kernel as tqdm and ``in_notebook`` see one, with ipywidgets not installed, and
    tqdm's notebook modules not imported yet (restored afterwards)."""
    shell = types.SimpleNamespace(config={"IPKernelApp": {}})
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "ipykernel.zmqshell", types.ModuleType("ipykernel.zmqshell"))
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # `import ipywidgets` fails
    for name in ("QT_API", "TQDM_DISABLE"):
        monkeypatch.delenv(name, raising=False)
    saved = {name: sys.modules.pop(name) for name in _TQDM_NOTEBOOK_MODULES if name in sys.modules}
    try:
        yield
    finally:
        for name in _TQDM_NOTEBOOK_MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def test_the_simulated_notebook_is_one_that_tqdm_auto_warns_in(
    notebook_without_widgets: None,
) -> None:
    """The control: importing tqdm.auto here gives the warning the helper must avoid."""
    assert in_notebook()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import tqdm.auto  # noqa: F401
    assert any("IProgress not found" in m for m in _tqdm_warnings(caught)), caught


def test_a_bar_in_a_notebook_without_ipywidgets_is_a_text_bar_and_no_warning(
    notebook_without_widgets: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from tqdm.std import tqdm

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bar = make_bar(total=2, desc="embedding", unit="chunk", show=None)  # a notebook: shown
        assert bar is not None
        bar.update(2)
        bar.close()
    assert _tqdm_warnings(caught) == []
    assert type(bar) is tqdm
    assert "2/2" in capsys.readouterr().err


def test_libraries_that_import_tqdm_auto_stay_quiet_after_require(
    notebook_without_widgets: None,
) -> None:
    """sentence-transformers, transformers and huggingface_hub import tqdm.auto themselves; they
    come through ``require``, which imports it quietly first."""
    from gl_retrieval._deps import require

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        require("json")  # any module: the quiet import happens first
        auto = require("tqdm.auto")  # as sentence-transformers' own import would
        quiet_notebook_tqdm()  # once is enough; again is a no-op
    assert _tqdm_warnings(caught) == []
    from tqdm.std import tqdm

    assert issubclass(auto.tqdm, tqdm)
    assert sys.modules["tqdm.autonotebook"].tqdm is tqdm  # the text-bar fallback


def test_nobody_watching_tqdm_disable_or_nothing_to_count_give_no_bar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(_progress, "in_notebook", lambda: False)
    assert make_bar(total=3, desc="x", unit="it", show=False) is None
    assert make_bar(total=3, desc="x", unit="it", show=None) is None  # stderr is captured
    assert make_bar(total=0, desc="x", unit="it", show=True) is None
    bar = make_bar(total=3, desc="x", unit="it", show=True)
    assert bar is not None
    bar.close()
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert make_bar(total=3, desc="x", unit="it", show=True) is None


class _FakeSentenceTransformer:
    """``encode`` as sentence-transformers has it; a text's vector is (its length, its index)."""

    def __init__(self, texts: list[str]) -> None:
        self.index = {t: i for i, t in enumerate(texts)}
        self.calls: list[dict[str, Any]] = []

    def encode(self, texts: list[str], **kwargs: Any) -> np.ndarray:
        self.calls.append({"n": len(texts), **kwargs})
        return np.array([[len(t), self.index[t]] for t in texts], dtype=np.float64)


def test_sentence_transformers_encode_gets_the_package_bar_and_keeps_the_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gl_retrieval.embedders.huggingface import BAR_BATCHES, encode_with_bar

    texts = [f"text {'x' * (i * 7 % 23)} {i}" for i in range(50)]
    model = _FakeSentenceTransformer(texts)
    quiet = encode_with_bar(model, texts, batch_size=2, normalize=True, show_progress=False)
    shown = encode_with_bar(model, texts, batch_size=2, normalize=True, show_progress=True)
    assert shown.dtype == np.float32
    np.testing.assert_array_equal(shown, quiet)
    assert shown[:, 1].tolist() == list(range(50))
    assert [c["n"] for c in model.calls] == [50, *[2 * BAR_BATCHES] * 3, 50 - 6 * BAR_BATCHES]
    assert all(c["show_progress_bar"] is False for c in model.calls)
    assert "50/50" in capsys.readouterr().err


def test_no_module_but_progress_builds_a_bar() -> None:
    """No other module imports tqdm, and no call asks a library for its own bar
    (``show_progress_bar=`` anything but False)."""
    root = Path(gl_retrieval.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "_progress.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(n == "tqdm" or n.startswith("tqdm.") for n in names):
                found.append(f"{path.relative_to(root)}:{node.lineno} imports tqdm")
            asks_for_a_bar = isinstance(node, ast.keyword) and node.arg == "show_progress_bar"
            if asks_for_a_bar and not (
                isinstance(node.value, ast.Constant) and node.value.value is False
            ):
                found.append(f"{path.relative_to(root)}:{node.value.lineno} show_progress_bar")
    assert found == []
