"""Device choice: cuda, then mps, then cpu."""

from __future__ import annotations

from gl_retrieval._deps import require

__all__ = ["resolve_device"]


def resolve_device(device: str = "auto") -> str:
    """Return a concrete torch device name for ``device`` (``"auto"`` picks cuda > mps > cpu)."""
    if device != "auto":
        return device
    torch = require("torch", package="torch")
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"
