"""Print the table of hostile inputs for docs/hostile-inputs.md, from real runs of the test rows.

    PYTHONPATH=. python -m tools.hostile_table > /tmp/table.md

Each row of tests/test_hostile_inputs.py runs through the CLI in a fresh temporary directory;
the table shows its exit code, wall time and the one line it printed (temporary paths as $TMP).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from typer.testing import CliRunner

from gl_retrieval.cli import app
from tests.conftest import MINILM, SMALL_CORPUS, write_corpus
from tests.test_hostile_inputs import ROWS


def main() -> None:
    runner = CliRunner()
    print(f"load average: {os.getloadavg()[0]:.2f}")
    print()
    print("| input | exit | time | what it gets |")
    print("|---|---|---|---|")
    for row in ROWS:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(os.path.realpath(d))
            corpus = write_corpus(tmp / "corpus.jsonl", SMALL_CORPUS)
            base = {
                "embedder": {"provider": "huggingface", "model": MINILM},
                "retriever": {"top_k": 5},
                "storage": {"persist_dir": str(tmp / "index")},
                "sources": [{"path": str(corpus)}],
                "chunking": {"chunk_size": 128, "chunk_overlap": 16},
            }
            env = {"HF_HOME": str(tmp / "hf"), **row.env}
            old = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                args, _ = row.setup(tmp, base)
                t0 = time.perf_counter()
                r = runner.invoke(app, [str(a) for a in args])
                seconds = time.perf_counter() - t0
            finally:
                for k, v in old.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            line = next((x for x in r.stderr.splitlines() if x.startswith("error:")), "")
            line = line.replace(str(tmp), "$TMP").replace("|", "\\|")
            print(f"| `{row.id}` | {r.exit_code} | {seconds:.2f} s | {line} |")


if __name__ == "__main__":
    main()
