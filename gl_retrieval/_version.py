"""The package version: a leaf that ``gl_retrieval``, the CLI and ``serve`` import."""

__version__ = "0.1.0"
