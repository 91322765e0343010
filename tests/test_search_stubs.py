"""Stand-in train functions for the search tests (no tests in here): tests/search_with_stub.py passes one
to `run_search(settings, train_fn=...)`; Ray pickles it by reference and its workers import this module.

They keep `dpgdiff.train`'s signature and Reporter contract, so the Ray/Optuna/MLflow plumbing
sees exactly what the real trainer produces; they only inject failures.
"""

from __future__ import annotations

import math

from dpgdiff import train as real_train


class _NaNReporter:
    """Passes results on, but with a NaN validation metric (what a diverging model would report)."""

    def __init__(self, inner):
        self.inner = inner
        self.wants_checkpoint = inner.wants_checkpoint

    def __call__(self, epoch, metrics, checkpoint_dir):
        self.inner(epoch, {**metrics, "val_mrr_sum": math.nan}, checkpoint_dir)


def train_nan_when_add(config, dataset, reporter=None, resume_from=None, out_dir=None, **kwargs):
    """The real trainer; trials sampled with model.xt_injection=add report NaN and must fail."""
    if config.model.xt_injection == "add" and reporter is not None:
        reporter = _NaNReporter(reporter)
    return real_train(config, dataset, reporter=reporter, resume_from=resume_from, out_dir=out_dir, **kwargs)


def train_always_fails(config, dataset, reporter=None, resume_from=None, out_dir=None, **kwargs):
    raise ValueError(f"stub failure (lr={config.train.lr:.3g})")


class _SlowReporter:
    """Passes results on, then waits: makes trials long enough to interrupt at a chosen moment."""

    def __init__(self, inner, seconds: float):
        self.inner, self.seconds = inner, seconds
        self.wants_checkpoint = inner.wants_checkpoint

    def __call__(self, epoch, metrics, checkpoint_dir):
        record_epoch(epoch)
        self.inner(epoch, metrics, checkpoint_dir)
        import time

        time.sleep(self.seconds)


EPOCH_LOG_ENV = "DPGDIFF_STUB_EPOCH_LOG"  # a file: train_slow appends "trial_id epoch pid node_id time" per epoch


def record_epoch(epoch: int) -> None:
    """Append the epoch just trained (before it is reported: a kill may lose its report) to $DPGDIFF_STUB_EPOCH_LOG.
    Set on the Ray nodes, which the trial workers inherit it from (tests/test_node_loss.py)."""
    import os

    path = os.environ.get(EPOCH_LOG_ENV)
    if path:
        import time

        import ray
        from ray import tune

        line = (f"{tune.get_context().get_trial_id()} {int(epoch)} {os.getpid()} "
                f"{ray.get_runtime_context().get_node_id()} {time.time():.3f}\n")
        with open(path, "a") as log:  # one short line per append: whole lines even from several processes
            log.write(line)


def train_slow(config, dataset, reporter=None, resume_from=None, out_dir=None, **kwargs):
    """The real trainer with a 1 s pause after every validation pass."""
    if reporter is not None:
        reporter = _SlowReporter(reporter, 1.0)
    return real_train(config, dataset, reporter=reporter, resume_from=resume_from, out_dir=out_dir, **kwargs)


FAIL_AT_EPOCH_ENV = "DPGDIFF_STUB_FAIL_AT_EPOCH"  # set in the driver's environment, which local Ray workers inherit


class _FailingReporter:
    """Passes results on until the epoch in $DPGDIFF_STUB_FAIL_AT_EPOCH, then raises (a trial that crashed after
    its last checkpoint)."""

    def __init__(self, inner, epoch: int):
        self.inner, self.epoch = inner, epoch
        self.wants_checkpoint = inner.wants_checkpoint

    def __call__(self, epoch, metrics, checkpoint_dir):
        if epoch >= self.epoch:
            raise RuntimeError(f"stub failure at epoch {epoch}")
        self.inner(epoch, metrics, checkpoint_dir)


def train_fails_at_epoch_if_env(config, dataset, reporter=None, resume_from=None, out_dir=None, **kwargs):
    """The real trainer; while $DPGDIFF_STUB_FAIL_AT_EPOCH is set, it raises when that epoch is reported."""
    import os

    fail_at = os.environ.get(FAIL_AT_EPOCH_ENV)
    if fail_at and reporter is not None:
        reporter = _FailingReporter(reporter, int(fail_at))
    return real_train(config, dataset, reporter=reporter, resume_from=resume_from, out_dir=out_dir, **kwargs)


class _LongEpochReporter:
    """Passes results and in-epoch progress on, pausing in the progress hook: epochs long enough for the driver's
    status table to catch one under way."""

    def __init__(self, inner, seconds: float):
        self.inner, self.seconds = inner, seconds
        self.wants_checkpoint = inner.wants_checkpoint

    def __call__(self, epoch, metrics, checkpoint_dir):
        self.inner(epoch, metrics, checkpoint_dir)

    def progress(self, epoch, done, total, seconds):
        self.inner.progress(epoch, done, total, seconds)
        import time

        time.sleep(self.seconds)


def train_long_epochs(config, dataset, reporter=None, resume_from=None, out_dir=None, **kwargs):
    """The real trainer, its progress hook called after every batch (not every 5 s) and taking 0.5 s: an epoch of
    n batches lasts n / 2 seconds."""
    from dpgdiff.training import loop

    loop.PROGRESS_EVERY_S = 0.0  # this worker process only
    if reporter is not None:
        reporter = _LongEpochReporter(reporter, 0.5)
    return real_train(config, dataset, reporter=reporter, resume_from=resume_from, out_dir=out_dir, **kwargs)
