"""Doctests: ``pytest`` runs every docstring example in ``gl_retrieval/`` (``--doctest-modules``).

The front-door examples run for real, on the packaged MiniLM: they find ``pipe`` (the demo
config, ``examples/configs/demo.yaml``, indexed once per session into a temp directory) and
``index_dir`` (an empty temp directory) in their namespace. Examples that need a hub model, a
server or data they do not build are marked ``# doctest: +SKIP``.
"""

from __future__ import annotations

import doctest
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parent


@pytest.fixture(scope="session")
def _doctest_pipe(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from gl_retrieval import RetrievalPipeline, load_config

    cfg = load_config(ROOT / "examples" / "configs" / "demo.yaml")
    persist = tmp_path_factory.mktemp("doctest-demo") / "index"
    cfg = cfg.model_copy(
        update={"storage": cfg.storage.model_copy(update={"persist_dir": persist})}
    )
    pipe = RetrievalPipeline(cfg)
    pipe.index(show_progress=False)
    return pipe


@pytest.fixture(autouse=True)
def _doctest_namespace(
    request: pytest.FixtureRequest,
    doctest_namespace: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not isinstance(request.node, pytest.DoctestItem):
        return
    monkeypatch.chdir(ROOT)  # the examples' relative paths are the repository's
    doctest_namespace["index_dir"] = str(tmp_path_factory.mktemp("doctest-index") / "index")
    examples = request.node.dtest.examples
    if any("pipe" in ex.source and not ex.options.get(doctest.SKIP) for ex in examples):
        doctest_namespace["pipe"] = request.getfixturevalue("_doctest_pipe")
