"""MKL on AMD processors: let torch's MKL run its AVX2 kernels instead of its generic ones.

torch's x86 wheels link Intel's oneMKL for fp32 matmuls. oneMKL picks its fast code paths only after
its vendor check, `mkl_serv_intel_cpu_true()`, says the CPU is Intel; on AMD (and Hygon) processors
it falls back to generic kernels. For square products the gap is small, but for the skinny products a
training step is made of it is 2-3x: the full-softmax CE's `h @ E^T` (inner dimension d, one side
~30k items) ran at 41.8 GFLOP/s against 105.8 with the vendor check answered "yes" (d=64), on a 2-core
AMD EPYC (BENCHMARKS.md, issue 9). MKL still checks the instruction sets themselves (AVX2, FMA,
AVX-512) and uses only what the CPU has; only the vendor gate goes.

The fix is the well-known one-line shim, `int mkl_serv_intel_cpu_true(void) { return 1; }`, compiled
once per machine into the user cache (`$XDG_CACHE_HOME/dpgdiff`, else `~/.cache/dpgdiff`) and
loaded with RTLD_GLOBAL *before torch is imported*, so that libtorch's calls resolve to it. That is
why `import dpgdiff` runs `enable()` before anything imports torch: import dpgdiff first (the
`python -m dpgdiff` and `tune/` entry points do). Values are the same up to float rounding (another
kernel, another summation order); on Intel CPUs and non-x86 machines this does nothing.

    DPGDIFF_MKL_AMD=0   keep MKL's own dispatch (for an A/B, or if a future MKL misbehaves)

`STATUS` says what happened: "on", or "off: <why>" (logged at the start of a CPU training run and
printed by the benches, so a figure always says which kernels produced it).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from dpgdiff.files import atomic_write, user_cache_root

ENV = "DPGDIFF_MKL_AMD"
SHIM_SOURCE = "int mkl_serv_intel_cpu_true(void) { return 1; }\n"
AMD_VENDORS = ("AuthenticAMD", "HygonGenuine")

STATUS = "off: not tried"
_handle: ctypes.CDLL | None = None  # kept: the shim must stay loaded for the life of the process


def cpu_vendor(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The `vendor_id` of the first CPU in /proc/cpuinfo ("" when unreadable)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def compiler() -> str | None:
    """A C compiler on PATH: $CC, else cc, gcc or clang."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and (path := shutil.which(name)):
            return path
    return None


def build_shim(folder: Path | None = None) -> Path:
    """The compiled shim in `folder` (default: the user cache), built on first use; once built, later calls
    (every `import dpgdiff`) only find it. Built atomically: concurrent trial processes may race here.

    Raises OSError / subprocess.CalledProcessError when it cannot be built."""
    key = hashlib.sha256(f"{SHIM_SOURCE}{platform.machine()}".encode()).hexdigest()[:12]
    path = (folder or user_cache_root()) / f"mkl_intel_cpu_true-{key}.so"
    if path.exists():
        return path
    cc = compiler()
    if cc is None:
        raise OSError("no C compiler (cc, gcc or clang) on PATH")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "shim.c"
        source.write_text(SHIM_SOURCE)
        atomic_write(path, lambda out: subprocess.run(
            [cc, "-shared", "-fPIC", "-O2", "-o", out, str(source)], check=True, capture_output=True, text=True, timeout=60,
        ), mode=0o755)
    return path


def _load_shim() -> ctypes.CDLL:
    """Find (or build) the shim in the user cache and load it into the global symbol scope.

    Where the cache cannot be written (a read-only home on a cluster node), build it in a private temp
    folder (0700: no other user can swap the file) that goes once loaded: the mapping outlives the file."""
    try:
        path = build_shim()
    except OSError:
        if compiler() is None:  # the temp folder would fail the same way
            raise
        with tempfile.TemporaryDirectory(prefix="dpgdiff-mkl-") as tmp:
            return ctypes.CDLL(str(build_shim(Path(tmp))), mode=os.RTLD_GLOBAL)
    return ctypes.CDLL(str(path), mode=os.RTLD_GLOBAL)


def reason_to_skip(env: dict[str, str], system: str, machine: str, vendor: str, torch_loaded: bool) -> str | None:
    """Why this process should not (or cannot) load the shim; None when it should."""
    if env.get(ENV, "1") == "0":
        return f"{ENV}=0"
    if system != "linux" or machine not in ("x86_64", "AMD64"):
        return f"not needed on {system}/{machine}"
    if vendor not in AMD_VENDORS:
        return f"not needed on a {vendor or 'unknown'} CPU"
    if torch_loaded:
        return "torch was imported before dpgdiff (import dpgdiff first)"
    return None


def enable() -> str:
    """Load the shim when this machine needs it and it is not too late; -> and set `STATUS`."""
    global STATUS, _handle
    if _handle is not None:
        return STATUS
    skip = reason_to_skip(os.environ, sys.platform, platform.machine(), cpu_vendor(), "torch" in sys.modules)
    if skip is not None:
        STATUS = f"off: {skip}"
        if skip.startswith("torch was imported"):
            warnings.warn(f"dpgdiff: torch's MKL keeps its slow generic kernels on this AMD CPU because {skip}; "
                          f"see dpgdiff/mkl_amd.py", RuntimeWarning, stacklevel=3)
        return STATUS
    try:
        _handle = _load_shim()
        STATUS = "on"
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        STATUS = f"off: could not build or load the shim ({str(detail).strip()[:200]})"
    return STATUS
