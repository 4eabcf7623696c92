"""The public API: an explicit __all__, and `import gl_retrieval` stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import gl_retrieval
from tests.conftest import ROOT


def test_all_names_are_exported_and_sorted() -> None:
    names = gl_retrieval.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(gl_retrieval, name) is not None, name


def test_every_public_attribute_is_in_all() -> None:
    public = {
        n
        for n in dir(gl_retrieval)
        if not n.startswith("_")
        and not isinstance(getattr(gl_retrieval, n, None), type(sys))  # submodules
        and n not in {"annotations", "TYPE_CHECKING", "Any"}
    }
    assert public <= set(gl_retrieval.__all__), public - set(gl_retrieval.__all__)


def test_errors_share_one_base() -> None:
    for name in gl_retrieval.__all__:
        obj = getattr(gl_retrieval, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, gl_retrieval.GLRetrievalError), name


def test_import_is_light() -> None:
    code = (
        "import sys, json, gl_retrieval, gl_retrieval.config, gl_retrieval.errors;"
        "print(json.dumps(sorted(m for m in ('torch', 'sentence_transformers', 'transformers',"
        " 'llama_index.core', 'ollama') if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert json.loads(out.stdout) == []


def test_pipeline_import_does_not_load_torch() -> None:
    # Building a pipeline object is cheap: torch arrives with the first model load, not before.
    code = (
        "import sys; from gl_retrieval import RetrievalPipeline;"
        "RetrievalPipeline.from_config({'embedder': {'model': 'packaged:all-MiniLM-L6-v2'}});"
        "print('torch' in sys.modules, 'sentence_transformers' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.split() == ["False", "False"]
