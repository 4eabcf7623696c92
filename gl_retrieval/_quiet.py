"""Quiet model loads: no "Loading weights" bars or advisory logs from transformers.

Its own module so that both :mod:`gl_retrieval.models` and :mod:`gl_retrieval.testing` use it
without importing each other. Imports transformers only when a load happens.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["quiet_model_loads"]

_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved: tuple[bool, int] | None = None


@contextlib.contextmanager
def quiet_model_loads() -> Iterator[None]:
    """Silence transformers' "Loading weights" bars and advisory logs while a model loads.

    The library wraps every model load in this, so a Python program or a notebook sees no
    per-load bar or warning; transformers' own settings are put back afterwards (nested and
    concurrent loads included). Real errors still raise. Download bars of ``models pull`` are
    not affected.
    """
    global _quiet_depth, _quiet_saved
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_saved = (hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity())
            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0 and _quiet_saved is not None:
                bar, verbosity = _quiet_saved
                if bar:
                    hf_logging.enable_progress_bar()
                hf_logging.set_verbosity(verbosity)
                _quiet_saved = None
