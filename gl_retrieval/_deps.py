"""One helper for importing optional, heavy dependencies inside the builders that need them.

Several of them build their own progress bars with ``tqdm.auto``; in a notebook without ipywidgets
that import would warn, so :func:`require` first has it imported quietly
(:func:`gl_retrieval._progress.quiet_notebook_tqdm`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from gl_retrieval._progress import quiet_notebook_tqdm
from gl_retrieval.errors import MissingDependencyError

__all__ = ["require"]


def require(module: str, *, extra: str | None = None, package: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` saying what to install.

    Args:
        module: Dotted module name, e.g. ``"sentence_transformers"``.
        extra: The gl-retrieval extra that provides it, e.g. ``"postgres"``.
        package: The PyPI package to name when there is no extra.
    """
    package = package or module
    quiet_notebook_tqdm()
    try:
        return importlib.import_module(module)
    except ImportError as e:
        fix = f"pip install 'gl-retrieval[{extra}]'" if extra else f"pip install {package}"
        raise MissingDependencyError(f"{module} is not installed ({e}): run `{fix}`") from e
