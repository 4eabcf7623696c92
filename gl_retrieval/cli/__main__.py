"""`python -m gl_retrieval.cli`: the same as the `gl-retrieval` console script."""

from __future__ import annotations

from gl_retrieval.cli.entry import main

if __name__ == "__main__":
    main()
