"""Shared pytest fixtures: a small synthetic dataset (session-wide) and the Food-Kitchen files when present."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import pytest

from dpgdiff.data import CrossDomainDataset, load_dataset
from tests import busy

# Small but realistic: 1,200 items per domain leave room for 999 sampled negatives outside any history.
SYNTHETIC_TEST_OPTIONS = dict(n_users=400, n_items_x=1200, n_items_y=1200, seed=7)


def pytest_configure(config: pytest.Config) -> None:
    """DPGDIFF_BUSY=N: N CPU-bound processes beside the whole run (tests/busy.py), started here by the pytest
    process itself (xdist workers, which have `workerinput`, start none) and stopped by PID at its end."""
    n = busy.busy_count()  # a bad value stops the run here, naming the variable
    if n and not hasattr(config, "workerinput"):
        config._dpgdiff_busy = busy.start_busy(n)


def pytest_unconfigure(config: pytest.Config) -> None:
    busy.stop_busy(getattr(config, "_dpgdiff_busy", []))


def pytest_report_header(config: pytest.Config) -> str | None:
    procs = getattr(config, "_dpgdiff_busy", [])
    if not procs:
        return None
    return (f"{busy.BUSY_ENV}={len(procs)}: CPU-bound processes {' '.join(str(p.pid) for p in procs)} run beside the "
            f"tests; their wall-clock waits are x{busy.margin():g}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules marked slow (the Ray searches) run first, each in its own order: under `pytest -n` their
    minutes-long tests then start at once rather than last, and the workers finish together."""
    slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow)  # stable: modules stay contiguous


@pytest.fixture(scope="session", autouse=True)
def _isolated_user_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point the per-user cache (XDG_CACHE_HOME) at a temp folder, so tests never write to ~/.cache (apart from
    the MKL shim that `import dpgdiff` builds there on AMD CPUs, dpgdiff/mkl_amd.py, before any fixture runs)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))
        mp.setenv("MPLCONFIGDIR", str(tmp_path_factory.mktemp("matplotlib")))  # Optuna's plots import matplotlib
        yield


@pytest.fixture(scope="session", autouse=True)
def _isolated_ray_token(tmp_path_factory: pytest.TempPathFactory):
    """A Ray auth token of the test session's own, through RAY_AUTH_TOKEN_PATH (inherited by every subprocess).

    Ray 2.60 turns token auth on for local clusters and, when no token exists, writes one to ~/.ray/auth_token.
    With a token of our own, no test reads or writes the user's file, and nothing depends on an earlier run
    having left one there (issue 7). The token is 256 random bits in hex, the format `ray get-auth-token
    --generate` writes (written here directly: importing Ray for it costs seconds in every test session;
    tests/test_cluster.py makes its head token with Ray's own command)."""
    folder = tmp_path_factory.mktemp("ray_auth")
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_TOKEN_PATH", str(token))
        mp.delenv("RAY_AUTH_TOKEN", raising=False)
        yield token


@pytest.fixture(scope="session", autouse=True)
def _isolated_ray_temp_root():
    """A Ray temp root ($RAY_TMPDIR, inherited by every subprocess) of this test process's own (one per xdist
    worker), so that a search in one worker never cleans up the Ray of a driver that a test in another worker
    killed on purpose (tune/leftovers.py cleans every marked folder under the root whose driver is gone).
    At the end, what killed drivers left there is stopped (by PID) and the folder removed.
    Short (/tmp/tXXXXXXXX): Ray's socket paths under it, and under the tests' own roots inside it, stay under
    the 107 bytes a Unix socket path may have."""
    import tempfile

    from tune.leftovers import RAY_TMPDIR, clean_leftovers

    root = Path(tempfile.mkdtemp(prefix="t", dir="/tmp" if Path("/tmp").is_dir() else None))
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(RAY_TMPDIR, str(root))
            yield root
    finally:
        clean_leftovers(root, grace_s=2)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def _empty_mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store, its schema made once per session (per xdist worker)."""
    from tune import tracking

    db = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    tracking.create_sqlite_store(f"sqlite:///{db}")
    return db


@pytest.fixture
def mlflow_store(_empty_mlflow_store: Path, tmp_path: Path) -> str:
    """The tracking URI of a new, empty MLflow SQLite store at tmp_path/mlruns/mlflow.db (the path that
    tune.stores.local_tracking_uri and the tests' tracking_uri give), copied from `_empty_mlflow_store`:
    MLflow's schema migrations take 4-8 s per store on 2 busy cores. For tests of what goes into a store;
    making one is tested in tests/test_lost_trials.py and by every search test."""
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_empty_mlflow_store, db)
    return f"sqlite:///{db}"


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable data dir for the session; `synthetic_dataset` generates its files here."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def synthetic_dataset(synthetic_data_dir: Path) -> CrossDomainDataset:
    """Synthetic dataset, split "c2dsr" (400 users, 1,200 + 1,200 items); built once per session (< 1 s).

    Treat it as read-only: it is shared by every test of the session.
    """
    return load_dataset("synthetic", data_dir=synthetic_data_dir, **SYNTHETIC_TEST_OPTIONS)


@pytest.fixture(scope="module")
def batch(synthetic_dataset):
    """64 random `prefix` training examples of the synthetic set: (history, target, target_domain) tensors."""
    import torch

    ex = synthetic_dataset.training_examples("prefix")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(ex), generator=g)[:64]
    return (
        torch.as_tensor(ex.history)[idx],
        torch.as_tensor(ex.target)[idx],
        torch.as_tensor(ex.target_domain)[idx].long(),
    )


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder named by env DPGDIFF_DATA_DIR (holding Food-Kitchen/); skips when unset."""
    value = os.environ.get("DPGDIFF_DATA_DIR")
    if not value:
        pytest.skip("DPGDIFF_DATA_DIR not set: point it at the folder holding Food-Kitchen/ to run this test")
    return Path(value)


@pytest.fixture(scope="session")
def food_kitchen_dir(data_dir: Path) -> Path:
    """The Food-Kitchen folder of DPGDIFF_DATA_DIR; skips when the variable is unset or the folder is missing."""
    folder = data_dir / "Food-Kitchen"
    if not (folder / "validdata_new.txt").is_file():
        pytest.skip(f"DPGDIFF_DATA_DIR={data_dir} has no Food-Kitchen/validdata_new.txt")
    return folder


@pytest.fixture(scope="session")
def food_kitchen(food_kitchen_dir: Path) -> CrossDomainDataset:
    """Food-Kitchen with split "c2dsr-histories" (the training file is not shipped); about 0.5 s to load."""
    return load_dataset("food_kitchen", split="c2dsr-histories", data_dir=food_kitchen_dir.parent, download=False)


def write_c2dsr_dir(
    folder: Path,
    n_x: int,
    n_y: int,
    n_users: int,
    valid: list[str],
    test: list[str],
    train: list[str] | None = None,
) -> Path:
    """Write a tiny C2DSR-format folder; `valid`/`test`/`train` are full lines without the newline."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Alist.txt").write_text("".join(f"{j}\tAX{j}\t{j}\n" for j in range(n_x)))
    (folder / "Blist.txt").write_text("".join(f"{n_x + j}\tBY{j}\t{j}\n" for j in range(n_y)))
    (folder / "userlist.txt").write_text("".join(f"U{u}\t{u}\n" for u in range(n_users)))
    (folder / "validdata_new.txt").write_text("".join(line + "\n" for line in valid))
    (folder / "testdata_new.txt").write_text("".join(line + "\n" for line in test))
    if train is not None:
        (folder / "traindata_new.txt").write_text("".join(line + "\n" for line in train))
    return folder


def tok(item: int, ts: int) -> str:
    """One C2DSR token: `item|unix_ts|date|` (the date field is never used)."""
    return f"{item}|{ts}|2014-01-01 08:00:00|"


@pytest.fixture
def make_c2dsr_dir(tmp_path: Path):
    """Factory: make_c2dsr_dir(n_x, n_y, n_users, valid, test, train=None, name="tiny") -> folder."""

    def make(n_x, n_y, n_users, valid, test, train=None, name="tiny"):
        return write_c2dsr_dir(tmp_path / name, n_x, n_y, n_users, valid, test, train)

    return make
