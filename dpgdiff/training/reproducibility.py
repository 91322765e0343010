"""Reproducibility: devices and precision, thread count and deterministic algorithms, seeds, RNG state.

A resumed run continues exactly as an uninterrupted one because `capture_rng` / `restore_rng` save
and restore every random stream the loop draws from (python, numpy, torch, CUDA, the shuffling and
loss-noise generators), as tensors and plain types that `torch.load(weights_only=True)` accepts.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator

import numpy as np
import torch

from dpgdiff.config import Config, ConfigError
from dpgdiff.models.losses import LOGITS
from dpgdiff.training.cpu_memory import keep_freed_memory, release_freed_memory


# --------------------------------------------------------------------------------------------
# Devices, precision, determinism
# --------------------------------------------------------------------------------------------


def resolve_device(spec: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; anything else as given (checked)."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {spec!r}: expected auto, cpu, cuda or cuda:N ({str(exc).splitlines()[0]})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={spec!r} but CUDA is not available on this machine")
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked for (meant for GPUs; works on CPU too), otherwise a no-op."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def runtime_settings(config: Config, device: torch.device) -> Iterator[None]:
    """Thread count and deterministic algorithms for the duration of a run, restored afterwards.

    On CPU also the allocator (`cpu_memory.keep_freed_memory`, process-wide and kept); at the end of the
    run the CE's logits buffers and the heap's free memory go back to the kernel."""
    with contextlib.ExitStack() as restore:  # undone in reverse order
        restore.callback(torch.use_deterministic_algorithms, torch.are_deterministic_algorithms_enabled(),
                         warn_only=torch.is_deterministic_algorithms_warn_only_enabled())
        restore.callback(torch.set_num_threads, torch.get_num_threads())
        if config.train.num_threads is not None:
            torch.set_num_threads(config.train.num_threads)
        if device.type == "cpu":
            # Turns silent nondeterminism into a warning. Not on CUDA: there it would need
            # CUBLAS_WORKSPACE_CONFIG and slower kernels. Without the NaN fill of every torch.empty
            # that deterministic mode adds, a debugging aid that cost ~4% of a step (~1,200 fills).
            torch.use_deterministic_algorithms(True, warn_only=True)
            restore.callback(setattr, torch.utils.deterministic, "fill_uninitialized_memory",
                             torch.utils.deterministic.fill_uninitialized_memory)
            torch.utils.deterministic.fill_uninitialized_memory = False
            keep_freed_memory()
            restore.callback(release_freed_memory)
            restore.callback(LOGITS.clear)  # the run's CE buffers go first
        yield


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


# --------------------------------------------------------------------------------------------
# RNG state as tensors and plain types (torch.load(weights_only=True) accepts them)
# --------------------------------------------------------------------------------------------


def capture_rng(shuffle_gen: torch.Generator, noise_gen: torch.Generator) -> dict[str, Any]:
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),  # (version, tuple of ints, float | None)
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.uint32).astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "shuffle": shuffle_gen.get_state(),
        "noise": noise_gen.get_state(),
    }
    return state


def restore_rng(state: dict[str, Any], shuffle_gen: torch.Generator, noise_gen: torch.Generator) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    shuffle_gen.set_state(state["shuffle"])
    noise_gen.set_state(state["noise"])
