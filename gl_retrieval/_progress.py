"""Progress bars that go where the user is: a terminal, a notebook, or nowhere.

The one place the package builds a bar (a test checks that no other module imports tqdm).
``show_progress=None`` (the default of :meth:`RetrievalPipeline.index`) means "when someone is
watching": stderr is a terminal, or the code runs in a Jupyter kernel. In a notebook the bar is
a widget when ipywidgets is installed, else a text bar on stderr, and never tqdm's "IProgress not
found" warning: ``tqdm.auto`` would give it, so it is not used here, and the libraries that
import it themselves (sentence-transformers, transformers, huggingface_hub) come through
``_deps.require``, which first has :func:`quiet_notebook_tqdm` import it quietly.
``show_progress=False``, or tqdm's own ``TQDM_DISABLE`` set to anything, silences it.

Example:
    >>> bar = make_bar(total=3, desc="embedding", unit="chunk", show=False)
    >>> bar is None
    True
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

__all__ = ["in_notebook", "make_bar", "quiet_notebook_tqdm", "want_progress"]


def in_notebook() -> bool:
    """True inside a Jupyter (IPython kernel) process."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if callable(get) else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def want_progress(show_progress: bool | None) -> bool:
    """Resolve ``show_progress``: None means a terminal on stderr, or a notebook."""
    if show_progress is not None:
        return bool(show_progress)
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):  # a replaced or closed stderr
        pass
    return in_notebook()


def _disabled_by_env() -> bool:
    # tqdm reads TQDM_DISABLE once, when it is imported, as bool(value): any non-empty value.
    return bool(os.environ.get("TQDM_DISABLE"))


def _has_widgets() -> bool:
    try:
        import ipywidgets  # noqa: F401  (tqdm.notebook needs it; without it, a warning and no bar)
    except ImportError:
        return False
    return True


def make_bar(*, total: int, desc: str, unit: str, show: bool | None = True) -> Any | None:
    """A progress bar over ``total`` items, or None where nobody should see one.

    Args:
        total: How many items the bar counts (``bar.update(n)`` as they are done).
        desc: The label before the bar, e.g. ``"embedding"``.
        unit: What is counted, e.g. ``"chunk"``.
        show: Whether to show it; None: when someone is watching (:func:`want_progress`).

    Returns:
        tqdm's notebook widget in a notebook with ipywidgets, else a text bar on stderr; None
        when ``show`` resolves to False, ``total`` is 0, ``TQDM_DISABLE`` is set or tqdm is not
        installed. Callers ``update`` and ``close`` it when it is not None.
    """
    if not want_progress(show) or total <= 0 or _disabled_by_env():
        return None
    try:
        from tqdm.std import tqdm
    except ImportError:
        return None
    if in_notebook() and _has_widgets():
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm(total=total, desc=desc, unit=unit)
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)


def quiet_notebook_tqdm() -> None:
    """In a notebook, import ``tqdm.autonotebook`` with tqdm's warnings silenced.

    sentence-transformers, transformers and huggingface_hub build their own bars with
    ``tqdm.auto`` / ``tqdm.autonotebook``; imported in a notebook without ipywidgets, that module
    warns "IProgress not found" and falls back to the text bar. Imported here first (once), the
    fallback is the same and the warning is gone. Outside a notebook it does nothing.
    """
    if "tqdm.autonotebook" in sys.modules or not in_notebook():
        return
    try:
        from tqdm.std import TqdmWarning
    except ImportError:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TqdmWarning)
        import tqdm.autonotebook  # noqa: F401
