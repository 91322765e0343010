"""Run the search command line with a stand-in trainer from tests.test_search_stubs (no tests in here).

    python -m tests.search_with_stub STUB_NAME [tune/search.py arguments]

The stub reaches the trials through `tune.search.main(argv, train_fn=...)` -> `run_search(settings,
train_fn=...)`, the same public path any caller uses; nothing about it is saved with the search, so a
resume names the stub again.
"""

from __future__ import annotations

import os
import signal
import sys

from dpgdiff.cli import exit_process
from tests import test_search_stubs
from tune.search import main

# "registration": the driver SIGKILLs itself after logging the best model into the parent run, before registering
# it (tests/test_local_ray.py's kill point "between model logging and registration").
KILL_AT_ENV = "DPGDIFF_STUB_KILL_AT"


def _kill_before_registration() -> None:
    import tune.serving

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    tune.serving.mlflow.register_model = killed


if __name__ == "__main__":
    if os.environ.get(KILL_AT_ENV) == "registration":
        _kill_before_registration()
    exit_process(main(sys.argv[2:], train_fn=getattr(test_search_stubs, sys.argv[1])))  # as tune/search.py exits
