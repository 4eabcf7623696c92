"""builddaily: a docs assistant. Index a folder of markdown, then chat with it in the terminal.

Two stages find the sources: the bi-encoder retrieves ``retriever.top_k`` candidate chunks, the
cross-encoder reranks them down to ``reranker.top_n``. Then LlamaIndex's own chat engine
(``pipe.as_chat_engine()``, mode ``condense_plus_context``) streams an answer from them: a
follow-up question is first rewritten with the earlier turns into a standalone one, so "and
where are they cached?" retrieves for the models it refers to.

    python examples/builddaily_docs.py                       # a short scripted conversation
    python examples/builddaily_docs.py "how do I run offline?" "and on a GPU?"
    python examples/builddaily_docs.py --chat                # your questions, until an empty line
    python examples/builddaily_docs.py --config examples/configs/builddaily.yaml   # production

Which LLM writes the answers: the config's ``llm`` (production: ``llama3.2`` through Ollama)
when the Ollama server answers; otherwise -- always with the offline config, which has no
``llm`` section -- a STAND-IN (``StandInLLM`` in ``_common.py``) that streams a fixed text
starting ``[stand-in LLM: ...]`` and generates nothing. The sources printed under each answer
are real either way. In a terminal with no questions given, the chat is interactive.

Re-running embeds only pages that changed; pages deleted from the folder are pruned.

About the offline reranker: builddaily.offline.yaml names ``packaged:stand-in-cross-encoder``,
a tiny randomly initialised cross-encoder the library builds on first use. It runs the real
loading and scoring path, but its scores mean nothing, so the results keep the bi-encoder's
order (and say so). The production config uses BAAI/bge-reranker-base, whose scores do mean
relevance, and then the results are reranked.
"""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

from _common import (
    StandInLLM,
    load_example_config,
    parser,
    print_json,
    ranking_note,
    result_line,
)

from gl_retrieval import RetrievalPipeline
from gl_retrieval.models import quiet_model_loading
from gl_retrieval.ollama import resolve_base_url

#: The scripted conversation (when no questions are given and it is not interactive); the
#: second is a follow-up that the chat engine condenses with the first.
QUESTIONS = [
    "How do I use a hub model on a machine without internet?",
    "And where are those models cached?",
    "What happens when the index was built with a different embedder?",
]


def pick_llm(pipe: RetrievalPipeline) -> tuple[Any, str]:
    """The config's LLM when its server answers, else the labelled stand-in; and which it is."""
    llm = pipe.config.llm
    if llm is None:
        return StandInLLM("the config has no llm section"), "stand-in (no llm section)"
    if llm.provider == "ollama":
        url = resolve_base_url(llm.base_url, setting="llm.base_url")
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2):
                pass
        except OSError:
            return StandInLLM(f"no Ollama reachable at {url}"), f"stand-in (no Ollama at {url})"
    return pipe.llm, f"{llm.provider} {llm.model}"


def interactive_questions() -> Iterator[str]:
    """Questions typed at the prompt, until an empty line or end of input."""
    while True:
        try:
            question = input("\nyou> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not question:
            return
        yield question


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], default_config="builddaily.offline.yaml")
    p.add_argument("questions", nargs="*", help="a conversation (default: three about these docs)")
    p.add_argument("--chat", action="store_true", help="ask your own questions at a prompt")
    args = p.parse_args(argv)
    quiet_model_loading()

    cfg = load_example_config(args.config, index_dir=args.index_dir)
    pipe = RetrievalPipeline.from_config(cfg)
    summary = pipe.index(prune=True)  # docs get deleted too: drop pages gone from the folder
    pipe.warmup()  # load the embedder, the reranker and the index before the first question

    llm, llm_label = pick_llm(pipe)
    chat = pipe.as_chat_engine(llm=llm)  # LlamaIndex's chat engine over our two stages
    interactive = args.chat or (
        not args.questions and not args.json and sys.stdin.isatty() and sys.stdout.isatty()
    )
    if interactive:
        questions: Any = interactive_questions()
    else:
        questions = args.questions or QUESTIONS

    report: dict[str, Any] = {"config": str(args.config), "index": summary.to_dict()}
    report["llm"] = llm_label
    report["questions"] = []
    if not args.json:
        print(f"index: {summary.line()}")
        print(f"llm: {llm_label}")
    for question in questions:
        if args.json:  # one JSON document: no streaming
            response = chat.chat(question)
            text, hits = response.response, response.source_nodes
        else:
            if not interactive:
                print(f"\nyou> {question}")
            print("assistant> ", end="", flush=True)
            streaming = chat.stream_chat(question)
            for token in streaming.response_gen:  # the answer as it is written
                print(token, end="", flush=True)
            print()
            text, hits = streaming.response, streaming.source_nodes
            print(f"sources {ranking_note(hits)}")
            for rank, h in enumerate(hits, 1):
                print(result_line(rank, h))
        report["questions"].append(
            {"question": question, "answer": text, "results": [h.to_dict() for h in hits]}
        )

    if args.json:
        print_json(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
