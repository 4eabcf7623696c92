from __future__ import annotations

from pathlib import Path

import pytest

from gl_retrieval import ConfigError, PipelineConfig, load_config
from gl_retrieval.config import EmbeddedStorageConfig, OllamaEmbedderConfig, parse_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "pipeline.yaml"
    p.write_text(text)
    return p


def test_the_issue_schema_loads(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
embedder:
  provider: huggingface
  model: BAAI/bge-base-en-v1.5
reranker:
  model: BAAI/bge-reranker-base
  top_n: 5
retriever:
  top_k: 20
storage:
  persist_dir: ./.gl_index/docs
sources:
  - path: docs/
chunking:
  chunk_size: 512
  chunk_overlap: 64
""",
    )
    cfg = load_config(p)
    assert cfg.embedder.model == "BAAI/bge-base-en-v1.5"
    assert cfg.reranker is not None and cfg.reranker.top_n == 5
    # Relative paths resolve against the config file's folder, not the cwd.
    assert isinstance(cfg.storage, EmbeddedStorageConfig)
    assert cfg.storage.persist_dir == tmp_path / ".gl_index/docs"
    assert cfg.sources[0].path == tmp_path / "docs"


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("embeder: {}", "embeder: unknown key"),
        ("embedder: {modle: x}", "embedder.modle: unknown key"),
        (
            "embedder: {provider: ollam}",
            "embedder.provider: expected one of 'huggingface', 'ollama'",
        ),
        (
            "embedder: {batch_size: 0}",
            "embedder.batch_size: Input should be greater than 0 (got 0)",
        ),
        ("retriever: {top_k: many}", "retriever.top_k: Input should be a valid integer"),
        (
            "retriever: {mode: sparse}",
            "retriever.mode: expected one of 'dense', 'bm25' or 'hybrid'",
        ),
        ("storage: {backend: postgres}", "storage.url: Field required"),
        ("storage: {backend: s3}", "storage.backend: expected one of 'embedded', 'postgres'"),
        ("chunking: {chunk_size: 10, chunk_overlap: 10}", "chunk_overlap must be < chunk_size"),
        ("reranker: {top_n: 50}", "reranker.top_n (50) must be <= retriever.top_k (20)"),
        ("embedder: {preset: bgee}", "embedder.preset: expected one of"),
        ("- just a list", "the top level must be a mapping"),
        ("embedder: {model: [unclosed", "not valid YAML"),
    ],
)
def test_bad_configs_name_file_key_and_expectation(
    tmp_path: Path, yaml_text: str, expected: str
) -> None:
    p = write(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as err:
        load_config(p)
    message = str(err.value)
    assert message.startswith(str(p))
    assert expected in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_config_is_frozen() -> None:
    cfg = PipelineConfig()
    with pytest.raises(Exception, match="frozen"):
        cfg.retriever.top_k = 3  # type: ignore[misc]


def test_defaults() -> None:
    cfg = parse_config({})
    assert cfg.embedder.provider == "huggingface"
    assert cfg.embedder.model == "BAAI/bge-base-en-v1.5"
    assert cfg.embedder.batch_size == 64
    assert cfg.embedder.normalize is True
    assert cfg.reranker is None
    assert cfg.llm is None
    assert cfg.storage.backend == "embedded"


def test_ollama_defaults() -> None:
    cfg = parse_config({"embedder": {"provider": "ollama"}})
    assert isinstance(cfg.embedder, OllamaEmbedderConfig)
    assert cfg.embedder.model == "nomic-embed-text"


def test_round_trip_through_json_is_equal() -> None:
    cfg = parse_config(
        {
            "embedder": {"provider": "ollama", "query_prefix": "q: "},
            "reranker": {"model": "x", "top_n": 3},
            "storage": {"backend": "postgres", "url": "postgresql://u@h/db"},
            "sources": [{"path": "a.jsonl"}],
        }
    )
    assert PipelineConfig.model_validate(cfg.model_dump(mode="json")) == cfg
