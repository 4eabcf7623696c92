"""The bounded YAML reader: a config file becomes a :class:`PipelineConfig`, or one ConfigError.

Reading is bounded (size, nesting, alias expansion: :mod:`gl_retrieval.config.limits`) before
anything is validated, and validation errors name the file, the key path and what was expected.

Example:
    >>> parse_config({"retriever": {"top_k": 5}}).retriever.top_k
    5
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gl_retrieval.config import limits
from gl_retrieval.config.schema import PipelineConfig
from gl_retrieval.errors import ConfigError

__all__ = ["load_config", "parse_config"]


def _short(value: Any, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else f"{text[: width - 1]}… ({len(text):,} characters)"


_UNION_TAGS = ("huggingface", "ollama", "openai_like", "embedded", "postgres")


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        # Drop pydantic's union-branch tags from the path ("embedder.huggingface.model").
        loc = ".".join(
            str(p)
            for p in e["loc"]
            if not str(p).startswith("function-after") and str(p) not in _UNION_TAGS
        )
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        elif e["type"] == "literal_error" and "expected" in e.get("ctx", {}):
            msg = f"expected one of {e['ctx']['expected']}"
        elif e["type"] == "union_tag_invalid":
            key = "provider" if loc.split(".")[-1] in ("embedder", "llm") else "backend"
            loc = f"{loc}.{key}"
            msg = f"expected one of {e['ctx']['expected_tags']}"
        msg = msg.removeprefix("Value error, ")
        value = e.get("input")
        if e["type"] == "union_tag_invalid":
            value = e["ctx"]["tag"]
        hide = (
            isinstance(value, dict)
            or e["type"] in ("missing", "value_error")
            or loc.endswith("api_key")  # never echo a key, even a malformed one
        )
        shown = "" if hide else f" (got {_short(value)})"
        lines.append(f"{loc or '<root>'}: {msg}{shown}")
    return f"{source}: invalid config: " + "; ".join(lines)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting and too many nodes while composing, before Python's
    stack or the pure-Python composer's time are at risk."""

    _depth = 0
    _nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > limits.CONFIG_DEPTH:
                mark = self.peek_event().start_mark
                raise _TooBig(
                    f"config nested deeper than {limits.CONFIG_DEPTH} levels (the limit) at line "
                    f"{mark.line + 1}"
                )
            if self._nodes > limits.CONFIG_NODES:
                raise _TooBig(
                    f"config holds more than {limits.CONFIG_NODES:,} YAML values (the limit)"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _TooBig(Exception):
    pass


_BRACKETS = re.compile(r"[\[\]{}]")


def _flow_depth(text: str) -> int:
    """The deepest nesting of ``[`` / ``{`` in ``text``, counted in linear time.

    PyYAML's scanner looks ahead over every open flow level before it hands out a token, which
    is quadratic in the nesting (``[`` * 100,000 takes minutes), so nesting is bounded before
    the text reaches it. Brackets inside quoted strings count too: no real config holds 32
    unclosed ones.
    """
    depth = deepest = 0
    for m in _BRACKETS.finditer(text):
        if m.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth = max(0, depth - 1)
    return deepest


def _check_shape(data: Any, source: str) -> None:
    """Refuse configs nested deeper than CONFIG_DEPTH or holding more than CONFIG_VALUES values
    once aliases are expanded (shared objects count every time they are reached), in time
    linear in the distinct objects."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(obj: Any, depth: int) -> int:
        if depth > limits.CONFIG_DEPTH:
            raise ConfigError(
                f"{source}: config nested deeper than {limits.CONFIG_DEPTH} levels (the limit); "
                "no real config comes close"
            )
        if not isinstance(obj, (dict, list, tuple)):
            return 1
        key = id(obj)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError(f"{source}: config refers to itself (a recursive YAML alias)")
        active.add(key)
        items = [*obj.keys(), *obj.values()] if isinstance(obj, dict) else obj
        total = 1
        for item in items:
            total += size(item, depth + 1)
            if total > limits.CONFIG_VALUES:
                raise ConfigError(
                    f"{source}: config expands to more than {limits.CONFIG_VALUES:,} values "
                    "(the limit), through YAML aliases or sheer size; no real config comes close"
                )
        active.discard(key)
        sizes[key] = total
        return total

    size(data, 0)


def parse_config(data: Any, *, source: str = "<config>") -> PipelineConfig:
    """Validate a mapping into a :class:`PipelineConfig`, raising :class:`ConfigError`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        kind = {"list": "a list", "str": "a string", "int": "a number", "float": "a number"}.get(
            type(data).__name__, f"a {type(data).__name__}"
        )
        raise ConfigError(f"{source}: the top level must be a mapping of keys, but got {kind}")
    _check_shape(data, source)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def _read_yaml(p: Path) -> Any:
    try:
        reason = limits.not_a_file(p)
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config: {e.strerror}") from None
    if reason is not None:
        raise ConfigError(f"{p}: cannot read config: it is {reason}")
    try:
        raw = limits.read_capped(p, limits.CONFIG_BYTES)
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config: {e.strerror}") from None
    if raw is None:
        raise ConfigError(
            f"{p}: config file is larger than {limits.human_bytes(limits.CONFIG_BYTES)} (the "
            "limit); a config holds settings, not data: point sources at the data instead"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{p}: config is not UTF-8 text (byte {e.start}, line {line}): save it as UTF-8"
        ) from None
    if "\0" in text:
        raise ConfigError(f"{p}: config contains a NUL byte: it is not a text file")
    if _flow_depth(text) > limits.CONFIG_DEPTH:
        raise ConfigError(
            f"{p}: config nests [ or {{ deeper than {limits.CONFIG_DEPTH} levels (the limit); no "
            "real config comes close"
        )
    loader = _BoundedLoader(text)
    loader.name = str(p)  # marks in YAML errors name the file, not "<unicode string>"
    try:
        return loader.get_single_data()
    except _TooBig as e:
        raise ConfigError(f"{p}: {e}; no real config comes close") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {' '.join(str(e).split())}") from None
    finally:
        loader.dispose()


def load_config(path: str | os.PathLike[str]) -> PipelineConfig:
    """Load and validate a YAML config; relative paths resolve against the file's folder.

    Reading is bounded: a file over :data:`~.limits.CONFIG_BYTES`, nested deeper than
    ``CONFIG_DEPTH`` or expanding (through YAML aliases) to more than ``CONFIG_VALUES`` values is
    refused before any of it is validated.

    Args:
        path: The YAML file.

    Raises:
        ConfigError: the file is missing, not a regular file, too large, not UTF-8, not YAML, or
            does not match the schema. The message names the file, the key path and what was
            expected, or the limit it passed.

    Example:
        >>> cfg = load_config("examples/configs/demo.yaml")  # doctest: +SKIP
    """
    p = Path(path)
    data = _read_yaml(p)
    return parse_config(data, source=str(p)).resolve_paths(p.resolve().parent)
