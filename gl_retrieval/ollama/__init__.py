"""Ollama: the shared HTTP client settings (base URL, errors) and the answering LLM.

Takes an Ollama base URL (config, ``OLLAMA_HOST`` or the default) and the ``llm`` config; hands
on resolved URLs and error translation to the Ollama embedder, and LlamaIndex's Ollama LLM to
:mod:`gl_retrieval.answers` (which writes the answers).
"""

from __future__ import annotations

from gl_retrieval.ollama.client import ollama_errors, resolve_base_url
from gl_retrieval.ollama.llm import build_ollama_llm

__all__ = ["build_ollama_llm", "ollama_errors", "resolve_base_url"]
