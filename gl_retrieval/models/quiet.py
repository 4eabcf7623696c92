"""Quiet model loads: no "Loading weights" bars or advisory logs from transformers.

:func:`quiet_model_loads` wraps every model load of the library; :func:`quiet_model_loading`
quiets transformers for a whole process (the CLI, the examples). Imports transformers only when a
load happens.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

__all__ = ["apply_quiet", "quiet_model_loading", "quiet_model_loads"]

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


_quiet = False


def quiet_model_loading() -> None:
    """Silence transformers' per-load progress bars and advisory logs for the whole process.

    For programs that own their process (the CLI, the examples). Library loads are quiet
    anyway (:func:`quiet_model_loads`); this also quiets transformers' messages outside them.
    transformers is not imported for this (an onnx/openvino query path never loads it): the
    setting is applied when a torch model loads (:func:`apply_quiet`), or now if transformers
    is already loaded.
    """
    global _quiet
    _quiet = True
    if "transformers" in sys.modules:
        apply_quiet()


def apply_quiet() -> None:
    """Apply :func:`quiet_model_loading` to transformers (called by the torch model loaders)."""
    if not _quiet:
        return
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
