"""The docs are tests: code blocks run, configs validate, commands exist, messages match the code.

- every fenced ``python`` block in docs/*.md and the READMEs runs (in a scratch copy of the
  project's examples and demo data), unless the line before it is ``<!-- no-test ... -->``;
- every ``yaml`` block that looks like a pipeline config validates;
- every ``gl-retrieval ...`` command, in ``bash`` blocks and in inline code, parses against the
  real typer app (command, sub-command, options, arguments);
- every error message in docs/troubleshooting.md is raised for real here and must match;
- docs/configuration.md is what ``python -m tools.docgen`` generates from the schema;
- relative links and module paths in the docs point at things that exist.
"""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.exceptions import TyperException

from gl_retrieval import GLRetrievalError, RetrievalPipeline, load_config
from gl_retrieval.cli import app
from gl_retrieval.config import PipelineConfig, RerankerConfig
from tests.conftest import MINILM, ROOT
from tools.docgen import missing_descriptions, render_config_reference

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [
    p
    for p in (ROOT / "README.md", ROOT / "README.draft.md", ROOT / "examples" / "README.md")
    if p.exists()
]
#: Pages other engineers write in parallel: a link to one is fine while it does not exist yet.
PARALLEL_PAGES = {"ingestion.md", "benchmarks.md", "scaling.md"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str
    marker: str  # the HTML comment on the line before the fence, or ""

    @property
    def skipped(self) -> bool:
        return self.marker.startswith("<!-- no-test")

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a markdown page, with the comment line before each."""
    out: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        prev = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        start = i
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        marker = prev if prev.startswith("<!--") else ""
        out.append(Block(page, start + 1, m.group(1), "\n".join(body) + "\n", marker))
        i += 1
    return out


def all_blocks(lang: str) -> list[Block]:
    return [b for p in PAGES for b in blocks(p) if b.lang == lang]


# -- python blocks ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch project root: the examples and the demo data, as in a clone (no indexes)."""
    root = tmp_path_factory.mktemp("docs-workspace")
    shutil.copytree(
        ROOT / "examples", root / "examples", ignore=shutil.ignore_patterns(".gl_index")
    )
    shutil.copytree(ROOT / "gl_retrieval" / "data", root / "gl_retrieval" / "data")
    return root


PY_PAGES = sorted({b.page for b in all_blocks("python") if not b.skipped})


@pytest.mark.parametrize("page", PY_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(
    page: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """A page's python blocks run top to bottom in one namespace, like a reader would."""
    monkeypatch.chdir(workspace)
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for block in blocks(page):
        if block.lang != "python" or block.skipped:
            continue
        try:
            exec(compile(block.code, str(block), "exec"), namespace)
        except Exception as e:
            pytest.fail(f"{block}: the python block raised {type(e).__name__}: {e}")
    capsys.readouterr()


def test_no_test_markers_are_rare_and_say_why() -> None:
    skipped = [b for b in all_blocks("python") if b.skipped]
    for b in skipped:
        assert re.match(r"<!-- no-test: \S.* -->$", b.marker), f"{b}: say why: {b.marker}"
    assert len(skipped) <= 4, [str(b) for b in skipped]


# -- yaml blocks -----------------------------------------------------------------------------------


CONFIG_KEYS = set(PipelineConfig.model_fields)


def config_blocks() -> list[Block]:
    out = []
    for b in all_blocks("yaml"):
        data = yaml.safe_load(b.code)
        if isinstance(data, dict) and CONFIG_KEYS & set(data):
            out.append(b)
    return out


@pytest.mark.parametrize("block", config_blocks(), ids=str)
def test_yaml_configs_validate(block: Block, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(block.code, encoding="utf-8")
    load_config(path)  # raises ConfigError naming the key


def test_every_page_has_been_scanned() -> None:
    names = {p.name for p in DOCS.glob("*.md")}
    mine = {"index.md", "getting-started.md", "configuration.md", "architecture.md"}
    mine |= {"operations.md", "troubleshooting.md"}
    assert mine <= names
    assert len(config_blocks()) >= 3


# -- gl-retrieval commands -------------------------------------------------------------------------


def _commands_in(text: str) -> Iterator[list[str]]:
    """``gl-retrieval ...`` invocations in shell text (chains, env prefixes, comments)."""
    text = text.replace("\\\n", " ")
    for line in text.splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue
        segment: list[str] = []
        for tok in [*tokens, "&&"]:
            if tok in ("&&", "||", ";", "|"):
                while segment and re.match(r"^[A-Z_][A-Z0-9_]*=", segment[0]):
                    segment.pop(0)
                if segment and Path(segment[0]).name == "gl-retrieval":
                    yield segment[1:]
                segment = []
            else:
                segment.append(tok)


def documented_commands() -> list[tuple[str, list[str], bool]]:
    """(where, args, partial): commands in shell blocks (complete) and inline code (partial)."""
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for b in blocks(page):
            if b.lang in ("bash", "sh", "shell", "console"):
                out += [(str(b), args, False) for args in _commands_in(b.code)]
        for m in re.finditer(r"(?<!`)`(gl-retrieval [^`]+)`(?!`)", text):
            where = f"{page.relative_to(ROOT)} inline"
            out += [(where, args, True) for args in _commands_in(m[1].replace("...", ""))]
    return out


class CommandError(Exception):
    """A documented command that the CLI would reject."""


def check_command(args: list[str], *, partial: bool = False) -> None:
    """Parse ``args`` with the real command tree; raise :class:`CommandError` when wrong.

    ``partial`` (prose such as "re-run `gl-retrieval index`") checks the command and option
    names only, not that every required argument is given.

    typer vendors click (``typer._click``), so groups and errors are recognised by shape:
    a group has ``commands``; a usage error is a ``typer.exceptions.TyperException``.
    """
    cmd: Any = typer.main.get_command(app)
    name = "gl-retrieval"
    while hasattr(cmd, "commands"):
        group_opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
        if args and args[0] in group_opts:  # gl-retrieval --version
            return
        if not args or args[0] not in cmd.commands:
            raise CommandError(f"{name}: no command {args[:1]}; has {sorted(cmd.commands)}")
        name, cmd, args = args[0], cmd.commands[args[0]], args[1:]
    if partial:
        known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
        unknown = [a for a in args if a.startswith("-") and a.split("=")[0] not in known]
        if unknown:
            raise CommandError(f"{name}: no such option {unknown[0]}; has {sorted(known)}")
        return
    try:
        cmd.make_context(name, list(args))
    except typer.Exit:  # --help
        pass
    except TyperException as e:
        raise CommandError(e.format_message()) from None


def test_documented_commands_exist() -> None:
    found = documented_commands()
    assert len(found) >= 10
    errors = []
    for where, args, partial in found:
        try:
            check_command(args, partial=partial)
        except CommandError as e:
            errors.append(f"{where}: gl-retrieval {shlex.join(args)}: {e}")
    assert not errors, "\n".join(errors)


def test_command_checker_catches_mistakes() -> None:
    with pytest.raises(CommandError, match="no command"):
        check_command(["serv", "x.yaml"])
    with pytest.raises(CommandError, match="No such option: --top-m"):
        check_command(["query", "x.yaml", "q", "--top-m", "3"])
    with pytest.raises(CommandError, match="no command"):
        check_command(["models", "push", "x.yaml"])
    with pytest.raises(CommandError, match="Missing argument"):
        check_command(["query", "x.yaml"])
    check_command(["models", "pull", "x.yaml", "--json"])
    check_command(["query", "--help"])
    check_command(["index"], partial=True)
    with pytest.raises(CommandError, match="no such option --fast"):
        check_command(["index", "--fast"], partial=True)


# -- configuration.md ------------------------------------------------------------------------------


def test_configuration_reference_is_up_to_date() -> None:
    page = DOCS / "configuration.md"
    assert page.read_text(encoding="utf-8") == render_config_reference(), (
        "docs/configuration.md is out of date: run `python -m tools.docgen`"
    )


def test_every_config_key_has_a_description() -> None:
    assert missing_descriptions() == []


def test_configuration_reference_lists_every_key() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    dumped = PipelineConfig().model_dump()
    for section, value in dumped.items():
        assert f"| `{section}` |" in text
        for key in value if isinstance(value, dict) else ():
            assert f"| `{key}` |" in text, f"{section}.{key}"


# -- getting-started, links, module paths ----------------------------------------------------------


def test_getting_started_repeats_the_readme_commands() -> None:
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("no README.md")
    first = next(b for b in blocks(readme) if b.lang == "bash")
    assert first.code in (DOCS / "getting-started.md").read_text(encoding="utf-8")


def _anchors(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    out = set(re.findall(r'<a id="([^"]+)"></a>', text))
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def test_relative_links_resolve() -> None:
    problems = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            if not dest.exists():
                if dest.name not in PARALLEL_PAGES:
                    problems.append(f"{page.name}: {target}: no such file")
                continue
            if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                problems.append(f"{page.name}: {target}: no such anchor")
    assert not problems, "\n".join(problems)


def test_module_paths_in_docs_exist() -> None:
    missing = []
    for page in PAGES:
        for path in re.findall(r"`(gl_retrieval/[\w/]+(?:\.py)?)`", page.read_text("utf-8")):
            if not (ROOT / path).exists():
                missing.append(f"{page.name}: {path}")
    assert not missing, missing


# -- troubleshooting: the documented messages are the real ones ----------------------------------


def documented_errors() -> dict[str, str]:
    page = DOCS / "troubleshooting.md"
    out = {}
    for b in blocks(page):
        m = re.match(r"<!-- error: ([\w-]+) -->", b.marker)
        if m:
            assert b.lang == "text", f"{b}: error blocks are ```text"
            out[m.group(1)] = b.code.strip()
    return out


def template_regex(doc: str) -> re.Pattern[str]:
    """``error: a <placeholder> b`` -> a regex for the exception text; placeholders match text."""
    doc = re.sub(r"^(error|warning): ", "", doc)
    parts = re.split(r"<[a-z][a-z_ ]*>", doc)
    return re.compile(".+?".join(re.escape(p) for p in parts), flags=re.S)


@dataclass
class Env:
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    request: pytest.FixtureRequest
    small: dict[str, Any]


def _raised(fn: Callable[[], Any]) -> str:
    with pytest.raises(GLRetrievalError) as info:
        fn()
    return str(info.value)


def _yaml(env: Env, text: str) -> str:
    path = env.tmp / "pipeline.yaml"
    path.write_text(text)
    return _raised(lambda: load_config(path))


def _offline_hf(env: Env) -> Path:
    home = env.tmp / "hf"
    env.monkeypatch.setenv("HF_HOME", str(home))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT"):
        env.monkeypatch.delenv(var, raising=False)
    env.monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unknown_packaged(env: Env) -> str:
    from gl_retrieval.cli.checks import check_config, raise_for_problems

    path = env.tmp / "pipeline.yaml"
    path.write_text("embedder: {model: 'packaged:all-MiniLM-L12-v2'}\n")
    cfg = load_config(path)
    return _raised(lambda: raise_for_problems(check_config(cfg), source=path))


def _indexed(env: Env, **changes: Any) -> RetrievalPipeline:
    RetrievalPipeline.from_config(env.small).index()
    return RetrievalPipeline.from_config({**env.small, **changes})


def _mismatch(env: Env) -> str:
    return _raised(_indexed(env, chunking={"chunk_size": 100, "chunk_overlap": 10}).index)


def _prefix_mismatch(env: Env) -> str:
    pipe = _indexed(env, embedder={"model": MINILM, "query_prefix": "query: "})
    return _raised(pipe.index)


def _model_offline(env: Env) -> str:
    _offline_hf(env)
    cfg = {**env.small, "embedder": {"model": "BAAI/bge-base-en-v1.5"}}
    return _raised(RetrievalPipeline.from_config(cfg).index)


def _model_unreachable(env: Env) -> str:
    from gl_retrieval.retrieval.rerankers import build_reranker

    _offline_hf(env)
    env.monkeypatch.delenv("HF_HUB_OFFLINE")
    env.monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    return _raised(build_reranker(RerankerConfig(model="BAAI/bge-reranker-base")).warmup)


def _model_partial(env: Env) -> str:
    from tests.test_models import cache_model

    home = _offline_hf(env)
    partial = env.tmp / "partial"
    partial.mkdir()
    (partial / "config.json").write_text('{"model_type": "bert"}')
    cache_model(home, "acme/broken", partial)
    cfg = {**env.small, "embedder": {"model": "acme/broken"}}
    return _raised(RetrievalPipeline.from_config(cfg).index)


def _model_not_on_hub(env: Env) -> str:
    from tests.test_models import _FakeHub

    _offline_hf(env)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    server.error_code = "RepoNotFound"  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env.monkeypatch.delenv("HF_HUB_OFFLINE")
        env.monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        cfg = {**env.small, "embedder": {"model": "BAAI/bge-base-en-v1.6"}}
        return _raised(RetrievalPipeline.from_config(cfg).index)
    finally:
        server.shutdown()
        server.server_close()


def _ollama(env: Env, **embedder: Any) -> str:
    cfg = {**env.small, "embedder": {"provider": "ollama", "max_retries": 0, **embedder}}
    return _raised(RetrievalPipeline.from_config(cfg).index)


def _ollama_down(env: Env) -> str:
    return _ollama(env, base_url=f"http://127.0.0.1:{_free_port()}")


def _ollama_missing_model(env: Env) -> str:
    server = env.request.getfixturevalue("ollama_server")
    server.models = set()
    return _ollama(env, base_url=server.url)


def _ollama_timeout(env: Env) -> str:
    server = env.request.getfixturevalue("ollama_server")
    server.hang_next(5.0, n=5)
    return _ollama(env, base_url=server.url, timeout_s=0.5)


def _openai_like(env: Env, **llm: Any) -> str:
    from gl_retrieval.answers.llms import build_llm, llm_errors

    settings = {"provider": "openai_like", "model": "local-model", "max_retries": 0, **llm}

    def ask() -> None:
        model = build_llm(settings)
        with llm_errors(model):
            model.complete("anything")

    return _raised(ask)


def _llm_server(env: Env) -> Any:
    return env.request.getfixturevalue("openai_server")


def _llm_bad_key(env: Env) -> str:
    server = _llm_server(env)
    server.api_key = "sk-right"
    return _openai_like(env, base_url=server.url, api_key="sk-wrong")


def _llm_key_env_unset(env: Env) -> str:
    env.monkeypatch.delenv("VLLM_API_KEY", raising=False)
    return _openai_like(env, base_url="http://127.0.0.1:8000/v1", api_key_env="VLLM_API_KEY")


def _llm_timeout(env: Env) -> str:
    server = _llm_server(env)
    server.hang_next(5.0)
    return _openai_like(env, base_url=server.url, timeout_s=0.5)


def _chunk_capped(env: Env) -> str:
    cfg = {**env.small, "chunking": {}}
    summary = RetrievalPipeline.from_config(cfg).index()
    assert len(summary.warnings) == 1
    return summary.warnings[0]


def _damaged(env: Env, *, twice: bool) -> str:
    pipe = RetrievalPipeline.from_config(env.small)
    pipe.index()
    if twice:  # a second generation, so the first is an intact one to fall back to
        corpus = Path(env.small["sources"][0]["path"])
        corpus.write_text(corpus.read_text() + '{"_id": "x", "text": "One more."}\n')
        pipe.index()
    root = Path(env.small["storage"]["persist_dir"])
    gen = root / (root / "CURRENT").read_text().strip()
    vectors = next((gen / "default__vector_store").glob("vectors.*.npy"))
    data = bytearray(vectors.read_bytes())
    data[-4] ^= 0xFF
    vectors.write_bytes(bytes(data))
    return _raised(lambda: RetrievalPipeline.from_config(env.small).retrieve("anything"))


TRIGGERS: dict[str, Callable[[Env], str]] = {
    "config-unknown-key": lambda env: _yaml(env, "retriever:\n  top_kk: 5\n"),
    "config-choice": lambda env: _yaml(env, "embedder: {provider: openai}\n"),
    "config-top-n": lambda env: _yaml(env, "retriever: {top_k: 3}\nreranker: {top_n: 5}\n"),
    "config-unknown-packaged": _unknown_packaged,
    "config-too-large": lambda env: _yaml(env, "# " + "x" * (1024 * 1024) + "\n"),
    "index-not-found": lambda env: _raised(
        lambda: RetrievalPipeline.from_config(env.small).retrieve("anything")
    ),
    "index-mismatch": _mismatch,
    "prefix-mismatch": _prefix_mismatch,
    "model-offline": _model_offline,
    "model-unreachable": _model_unreachable,
    "model-partial": _model_partial,
    "model-not-on-hub": _model_not_on_hub,
    "ollama-down": _ollama_down,
    "ollama-missing-model": _ollama_missing_model,
    "ollama-timeout": _ollama_timeout,
    "llm-server-down": lambda env: _openai_like(
        env, base_url=f"http://127.0.0.1:{_free_port()}/v1"
    ),
    "llm-unknown-model": lambda env: _openai_like(
        env, base_url=_llm_server(env).url, model="qwen2.5-7b"
    ),
    "llm-bad-key": _llm_bad_key,
    "llm-key-env-unset": _llm_key_env_unset,
    "llm-timeout": _llm_timeout,
    "llm-not-configured": lambda env: _raised(
        lambda: RetrievalPipeline.from_config(env.small).ask("anything")
    ),
    "chunk-size-capped": _chunk_capped,
    "index-damaged": lambda env: _damaged(env, twice=True),
    "index-damaged-no-fallback": lambda env: _damaged(env, twice=False),
}


def test_every_documented_error_has_a_trigger() -> None:
    assert set(documented_errors()) == set(TRIGGERS)


@pytest.mark.parametrize("name", sorted(TRIGGERS))
def test_documented_error_matches_the_code(
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    small_config: dict[str, Any],
) -> None:
    doc = documented_errors()[name]
    actual = TRIGGERS[name](Env(tmp_path, monkeypatch, request, small_config))
    assert "\n" not in actual
    assert template_regex(doc).fullmatch(actual), (
        f"docs/troubleshooting.md ({name}) no longer matches the code:\n"
        f"  documented: {doc}\n  raised:     {actual}"
    )


def test_template_matching_is_strict() -> None:
    pattern = template_regex("error: no index at <persist_dir>: run `x` first")
    assert pattern.fullmatch("no index at /a/b: run `x` first")
    assert not pattern.fullmatch("no index at /a/b: run `y` first")
    assert not pattern.fullmatch("no index at : run `x` first")
