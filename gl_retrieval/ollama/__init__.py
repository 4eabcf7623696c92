"""Ollama: the shared HTTP client settings (base URL, errors) and the answering LLM.

Takes an Ollama base URL (config, ``OLLAMA_HOST`` or the default) and the ``llm`` config; hands
on resolved URLs and error translation to the Ollama embedder, and an answer synthesised from
retrieved nodes to the pipeline.
"""

from __future__ import annotations

from gl_retrieval.ollama.client import ollama_errors, resolve_base_url
from gl_retrieval.ollama.llm import build_ollama_llm, synthesize_answer

__all__ = ["build_ollama_llm", "ollama_errors", "resolve_base_url", "synthesize_answer"]
