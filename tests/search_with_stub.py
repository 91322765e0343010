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
# it (tests/test_local_ray.py's kill point "between model logging and registration"). "table": the trial table
# raises once a trial has ended (tests/test_resume.py: an exception in the driver, then a resume).
KILL_AT_ENV = "DPGDIFF_STUB_KILL_AT"


def _raise_in_the_trial_table() -> None:
    """"table": the trial table raises once a trial has ended, as Tune's best-trial line once did (a KeyError on a
    parameter column): an exception out of `tuner.fit()` in the driver, with Tune's state saved."""
    import tune.progress

    report = tune.progress.ProgressReporter.report

    def failing(self, trials, done, *sys_info):
        if any(t.status == "TERMINATED" for t in trials):
            raise RuntimeError("stub: the trial table failed")
        return report(self, trials, done, *sys_info)

    tune.progress.ProgressReporter.report = failing


def _kill_before_registration() -> None:
    import tune.serving

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    tune.serving.mlflow.register_model = killed


if __name__ == "__main__":
    if os.environ.get(KILL_AT_ENV) == "registration":
        _kill_before_registration()
    if os.environ.get(KILL_AT_ENV) == "table":
        _raise_in_the_trial_table()
    exit_process(main(sys.argv[2:], train_fn=getattr(test_search_stubs, sys.argv[1])))  # as tune/search.py exits
