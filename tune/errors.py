"""The search layer's errors of input: what a command refuses before (or instead of) running, with exit status 2
(tune/names.py's EXIT_USAGE). Nothing here imports anything: every module of tune/ can raise them."""

from __future__ import annotations


class SearchError(RuntimeError):
    """A problem found before any trial runs (arguments, resources, resume state)."""


class StoreError(SearchError):
    """A store or saved state that cannot be used as it is (tune/stores.py): the message names the file, what is
    wrong and what to do; nothing was changed."""


class ReportError(RuntimeError):
    """Nothing to report (unknown search name, empty store)."""
