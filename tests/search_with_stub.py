"""Run the search command line with a stand-in trainer from tests.test_search_stubs (no tests in here).

    python -m tests.search_with_stub STUB_NAME [tune/search.py arguments]

The stub reaches the trials through `tune.search.main(argv, train_fn=...)` -> `run_search(settings,
train_fn=...)`, the same public path any caller uses; nothing about it is saved with the search, so a
resume names the stub again.
"""

from __future__ import annotations

import sys

from dpgdiff.cli import exit_process
from tests import test_search_stubs
from tune.search import main

if __name__ == "__main__":
    exit_process(main(sys.argv[2:], train_fn=getattr(test_search_stubs, sys.argv[1])))  # as tune/search.py exits
