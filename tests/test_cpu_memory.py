"""`cpu_memory.keep_freed_memory`: a step's freed activations stay in the heap instead of being faulted in again."""

import json
import subprocess
import sys

import pytest

from dpgdiff.training.cpu_memory import _glibc

# One "step": 24 activations of about 4 MB written and all freed at the end, as a forward + backward pass
# does, each step's a little larger than the last (longer histories). With glibc's defaults each of them
# is above the mmap threshold that the previous step's frees set, so every step maps fresh memory and
# faults every page in again.
STEPS = """
import json, resource, sys, torch
from dpgdiff.training.cpu_memory import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
faults = []
for step in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    acts = [torch.empty(1024 * 1024 + step * 32768).fill_(1.0) for _ in range(24)]
    del acts
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"took": took, "faults": faults}))
"""


def _steps(mode):
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(_glibc() is None, reason="the allocator setting exists on Linux with glibc only")
def test_freed_activations_are_reused_not_faulted_in_again():
    default, kept = _steps("default"), _steps("keep")
    assert kept["took"] is True
    pages_per_step = 24 * 4 * 1024 * 1024 // 4096
    # glibc's defaults: every step faults all its pages in again
    assert min(default["faults"][1:]) > 0.9 * pages_per_step, default
    # kept: later steps reuse the heap (and fault in only its growth)
    assert max(kept["faults"][1:]) < 0.1 * pages_per_step, kept
