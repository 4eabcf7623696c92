"""builddaily: a docs assistant. Index a folder of markdown, then answer questions from it.

Two stages: the bi-encoder retrieves ``retriever.top_k`` candidate chunks, the cross-encoder
reranks them down to ``reranker.top_n``. With an ``llm`` section (the production config) an
Ollama model writes the answer from those chunks; without one (offline) the answer is the chunks.

    python examples/builddaily_docs.py                       # offline: packaged MiniLM
    python examples/builddaily_docs.py "how do I run offline?" --json
    python examples/builddaily_docs.py --config examples/configs/builddaily.yaml   # production

Re-running embeds only pages that changed; pages deleted from the folder are pruned.

About the offline reranker: builddaily.offline.yaml names ``packaged:stand-in-cross-encoder``,
a tiny randomly initialised cross-encoder the library builds on first use. It runs the real
loading and scoring path, but its scores mean nothing, so the results keep the bi-encoder's
order (and say so). The production config uses BAAI/bge-reranker-base, whose scores do mean
relevance, and then the results are reranked.
"""

from __future__ import annotations

from typing import Any

from _common import load_example_config, parser, print_json, ranking_note, result_line

from gl_retrieval import RetrievalPipeline
from gl_retrieval.models import quiet_model_loading

QUESTIONS = [
    "How do I use a hub model on a machine without internet?",
    "What happens when the index was built with a different embedder?",
    "How do I point gl-retrieval at an Ollama server on another machine?",
]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], default_config="builddaily.offline.yaml")
    p.add_argument("questions", nargs="*", help="questions (default: three about these docs)")
    args = p.parse_args(argv)
    quiet_model_loading()

    cfg = load_example_config(args.config, index_dir=args.index_dir)
    pipe = RetrievalPipeline.from_config(cfg)
    summary = pipe.index(prune=True)  # docs get deleted too: drop pages gone from the folder
    pipe.warmup()  # load the embedder, the reranker and the index before the first question

    report: dict[str, Any] = {"config": str(args.config), "index": summary.to_dict()}
    report["questions"] = []
    for question in args.questions or QUESTIONS:
        if pipe.config.llm is not None:
            answer = pipe.ask(question)  # retrieve + rerank, then the LLM writes from the sources
            text, hits = answer.answer, answer.sources
        else:
            text, hits = None, pipe.retrieve(question)  # retrieve top_k, rerank to top_n
        report["questions"].append(
            {"question": question, "answer": text, "results": [h.to_dict() for h in hits]}
        )
        if args.json:
            continue
        print(f"\n? {question}  {ranking_note(hits)}")
        if text:
            print(text.strip())
        for rank, h in enumerate(hits, 1):
            print(result_line(rank, h))

    if args.json:
        print_json(report)
    else:
        print(f"\nindex: {summary.line()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
