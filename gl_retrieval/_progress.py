"""Progress bars that go where the user is: a terminal, a notebook, or nowhere.

``show_progress=None`` (the default of :meth:`RetrievalPipeline.index`) means "when someone is
watching": stderr is a terminal, or the code runs in a Jupyter kernel. In a notebook the bar is
a widget when ipywidgets is installed, else a text bar on stderr (never tqdm's "IProgress not
found" warning). ``show_progress=False``, or tqdm's own ``TQDM_DISABLE=1``, silences it.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["in_notebook", "make_bar", "want_progress"]


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


def make_bar(*, total: int, desc: str, unit: str) -> Any | None:
    """A tqdm bar on stderr (a widget in a notebook with ipywidgets), or None without tqdm."""
    try:
        from tqdm.std import tqdm
    except ImportError:
        return None
    if in_notebook():
        try:
            import ipywidgets  # noqa: F401  (tqdm.notebook needs it; else a warning, no bar)
            from tqdm.notebook import tqdm as notebook_tqdm

            return notebook_tqdm(total=total, desc=desc, unit=unit)
        except ImportError:
            pass
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)
