"""Shared helpers of the bench/ scripts: threads, dataset with a synthetic fallback, RSS, medians."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time

import dpgdiff  # noqa: F401  (before torch: on AMD CPUs it loads its MKL fix first, dpgdiff/mkl_amd.py)
import torch


def set_threads(n: int) -> None:
    torch.set_num_threads(n)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def median_seconds(fn, repeats: int, warmup: int = 0) -> float:
    """Median wall seconds of fn() over `repeats` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times)


def cpu_model() -> str:
    """The CPU's model name as lscpu prints it (speed figures only carry with it); /proc/cpuinfo without lscpu."""
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    if not out and os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            out = f.read().replace("model name", "Model name")
    for line in out.splitlines():
        if line.strip().startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def step_gflop(step) -> float:
    """GFLOP of one call of step() (forward + backward + optimizer), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


def machine() -> str:
    return (f"{cpu_model()}, {os.cpu_count()} logical CPUs visible, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {mkl_amd()}; {load()}")


def mkl_amd() -> str:
    """Whether dpgdiff's MKL fix for AMD CPUs is in effect in this process (absent in trees before it)."""
    module = getattr(dpgdiff, "mkl_amd", None)
    return f"MKL AMD fix {module.STATUS if module else 'absent (older tree)'}"


def load() -> str:
    """1-minute load average: on a shared machine it says how far to trust a timing."""
    return f"load avg {os.getloadavg()[0]:.1f}"


def load_food_kitchen(data_dir: str | None, split: str = "c2dsr-histories"):
    """Food-Kitchen, or (when its files are missing) a synthetic dataset of the same size -> (dataset, note)."""
    from dpgdiff.data import load_dataset

    try:
        return load_dataset("food_kitchen", split, data_dir=data_dir), "food_kitchen"
    except Exception as exc:  # missing files: fall back, but say so in the output
        print(f"note: food_kitchen unavailable ({exc}); using synthetic data of the same size", file=sys.stderr)
        ds = load_dataset("synthetic", **FOOD_KITCHEN_SIZED)
        return ds, "synthetic (Food-Kitchen-sized)"


# Food-Kitchen's item counts and user count (spec §1.1); synthetic users have 1-3 training
# sequences each, so the training set is roughly as large as C2DSR's 34,117 sequences.
FOOD_KITCHEN_SIZED = {"n_items_x": 29207, "n_items_y": 34886, "n_users": 16579}



def batch_sampler(examples, batch_size: int, seed: int = 0):
    """A function returning random (history, target, target_domain) training batches of `examples`, seeded."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def batch():
        idx = rng.choice(len(examples), size=batch_size, replace=False)
        return (torch.from_numpy(examples.history[idx]), torch.from_numpy(examples.target[idx]),
                torch.from_numpy(examples.target_domain[idx].astype(np.int64)))

    return batch
