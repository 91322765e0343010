"""dpgdiff/mkl_amd.py: when the MKL vendor-check shim loads, that it builds, and that it changes no values."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dpgdiff import mkl_amd
from tests.busy import scaled

AMD_HERE = mkl_amd.cpu_vendor() in mkl_amd.AMD_VENDORS and sys.platform == "linux"
NEEDS_CC = pytest.mark.skipif(mkl_amd.compiler() is None, reason="no C compiler on PATH to build the shim")


def run_python(code: str, *argv: str, **env: str) -> str:
    """stdout of `python -c code argv...` in a fresh process, with `env` added to this one's."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *argv], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=scaled(120))
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cpu_vendor_reads_the_first_vendor_id(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n"
                       "processor\t: 1\nvendor_id\t: GenuineIntel\n")
    assert mkl_amd.cpu_vendor(str(cpuinfo)) == "AuthenticAMD"
    assert mkl_amd.cpu_vendor(str(tmp_path / "missing")) == ""


@pytest.mark.parametrize(("env", "system", "machine", "vendor", "torch_loaded", "expected"), [
    ({}, "linux", "x86_64", "AuthenticAMD", False, None),
    ({}, "linux", "x86_64", "HygonGenuine", False, None),
    ({"DPGDIFF_MKL_AMD": "1"}, "linux", "x86_64", "AuthenticAMD", False, None),
    ({"DPGDIFF_MKL_AMD": "0"}, "linux", "x86_64", "AuthenticAMD", False, "DPGDIFF_MKL_AMD=0"),
    ({}, "linux", "x86_64", "GenuineIntel", False, "not needed on a GenuineIntel CPU"),
    ({}, "linux", "aarch64", "", False, "not needed on linux/aarch64"),
    ({}, "darwin", "x86_64", "AuthenticAMD", False, "not needed on darwin/x86_64"),
    ({}, "linux", "x86_64", "AuthenticAMD", True, "torch was imported before dpgdiff (import dpgdiff first)"),
])
def test_reason_to_skip(env, system, machine, vendor, torch_loaded, expected) -> None:
    assert mkl_amd.reason_to_skip(env, system, machine, vendor, torch_loaded) == expected


@NEEDS_CC
def test_build_shim_makes_a_library_whose_vendor_check_says_yes(tmp_path: Path) -> None:
    path = mkl_amd.build_shim(tmp_path)
    assert path.parent == tmp_path and path.suffix == ".so"
    assert ctypes.CDLL(str(path)).mkl_serv_intel_cpu_true() == 1
    built = path.stat().st_mtime_ns
    assert mkl_amd.build_shim(tmp_path) == path and path.stat().st_mtime_ns == built  # built once, then reused
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_no_compiler_leaves_mkl_alone_and_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    assert mkl_amd.compiler() is None
    with pytest.raises(OSError, match="no C compiler"):
        mkl_amd.build_shim(tmp_path)


# One fresh process with the shim and one without, shared by the two tests below (each start imports torch).
FRESH_PROCESS = """
    import ctypes, json, sys, dpgdiff, torch
    from dpgdiff import mkl_amd
    found = shim = None
    if mkl_amd._handle is not None:  # the symbol libtorch's MKL calls, and the shim's
        found = ctypes.cast(ctypes.CDLL(None).mkl_serv_intel_cpu_true, ctypes.c_void_p).value
        shim = ctypes.cast(mkl_amd._handle.mkl_serv_intel_cpu_true, ctypes.c_void_p).value
    # the CE's matmuls (skinny: inner dimension d, ~30k items), forward and both gradients
    torch.manual_seed(0)
    h = torch.randn(300, 64, requires_grad=True)
    table = torch.randn(20000, 64, requires_grad=True)
    logits = h @ table.t()
    logits.backward(torch.randn_like(logits))
    torch.save({"logits": logits.detach(), "h": h.grad, "table": table.grad}, sys.argv[1])
    print(json.dumps({"status": mkl_amd.STATUS, "same": found is not None and found == shim}))
"""


@pytest.fixture(scope="module")
def with_and_without(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """FRESH_PROCESS run with the shim (a new cache folder) and with DPGDIFF_MKL_AMD=0 -> per run: its output,
    its values file, and (with the shim) the cache folder."""
    tmp = tmp_path_factory.mktemp("mkl_amd")
    runs = {}
    for name, env in (("on", {"XDG_CACHE_HOME": str(tmp / "cache")}), ("off", {"DPGDIFF_MKL_AMD": "0"})):
        out = run_python(FRESH_PROCESS, str(tmp / f"{name}.pt"), **env)
        runs[name] = {"out": json.loads(out), "values": tmp / f"{name}.pt"}
    runs["cache"] = tmp / "cache"
    return runs


@pytest.mark.skipif(not AMD_HERE, reason="the shim loads only on AMD CPUs under Linux; this machine is not one")
@NEEDS_CC
def test_import_dpgdiff_makes_libtorch_resolve_the_vendor_check_to_the_shim(with_and_without, tmp_path: Path) -> None:
    """In a fresh process: `import dpgdiff` before torch puts the shim first in the global symbol scope,
    so the symbol libtorch's MKL calls is the shim's; importing torch first leaves MKL alone and says so."""
    assert with_and_without["on"]["out"] == {"status": "on", "same": True}
    assert list((with_and_without["cache"] / "dpgdiff").glob("mkl_intel_cpu_true-*.so"))
    assert with_and_without["off"]["out"] == {"status": "off: DPGDIFF_MKL_AMD=0", "same": False}
    late = run_python("import torch, dpgdiff; print(dpgdiff.mkl_amd.STATUS)", XDG_CACHE_HOME=str(tmp_path))
    assert late.strip() == "off: torch was imported before dpgdiff (import dpgdiff first)"


@pytest.mark.skipif(not AMD_HERE, reason="the shim loads only on AMD CPUs under Linux; this machine is not one")
@NEEDS_CC
def test_the_shim_changes_no_values_beyond_float_rounding(with_and_without) -> None:
    """The CE's matmuls with MKL's AVX2 kernels and with its generic ones agree to float rounding, forward and
    both gradients."""
    import torch

    on = torch.load(with_and_without["on"]["values"], weights_only=True)
    off = torch.load(with_and_without["off"]["values"], weights_only=True)
    assert (with_and_without["on"]["out"]["status"], with_and_without["off"]["out"]["status"]) == (
        "on", "off: DPGDIFF_MKL_AMD=0")
    # Float rounding of a sum of K products grows with K and with the operands' scale: h's gradient sums 20,000
    # terms of size ~1 (entries ~140), so an entry-wise 1e-4 failed on an AMD machine (2e-4 off, 17 of 19,200
    # entries) while the norm-wise error was 4e-7. The check is relative to each tensor's scale, as BLAS tests are.
    for key in ("logits", "h", "table"):
        scale = off[key].abs().max().item()
        torch.testing.assert_close(on[key], off[key], rtol=0, atol=1e-5 * scale, msg=lambda m: f"{key}: {m}")
        assert ((on[key] - off[key]).norm() / off[key].norm()).item() < 1e-5, key


@pytest.mark.skipif(not AMD_HERE, reason="the shim loads only on AMD CPUs under Linux; this machine is not one")
@NEEDS_CC
def test_an_unwritable_cache_still_gets_the_shim_from_a_private_temp_folder(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.write_text("a file where the cache folder should be")  # mkdir fails, as on a read-only home
    temp = tmp_path / "temp"
    temp.mkdir()
    out = run_python("import dpgdiff; print(dpgdiff.mkl_amd.STATUS)", XDG_CACHE_HOME=str(cache), TMPDIR=str(temp))
    assert out.strip() == "on"
    assert list(temp.iterdir()) == []  # the temp build is gone once loaded
