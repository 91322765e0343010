"""Datasets: the C2DSR benchmark pairs, the synthetic default, and bring-your-own interaction logs.

    ds = load_dataset("food_kitchen", split="c2dsr-histories")   # or "movie_book", "synthetic", "log.csv", a folder
    ex = ds.training_examples("prefix")                           # spec §1.4
    print(ds.card())
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dpgdiff.data.c2dsr import C2DSR_SPLITS, DEFAULT_MAX_LEN, load_c2dsr_folder
from dpgdiff.data.dataset import (
    DOMAIN_NAMES,
    DOMAIN_NONE,
    DOMAIN_X,
    DOMAIN_Y,
    PAD,
    CrossDomainDataset,
    DataError,
    DatasetCard,
    EvalCases,
    ItemSpace,
    TrainExamples,
)
from dpgdiff.data.ref import DatasetRef
from dpgdiff.data.sources import (
    NAMED_DATASETS,
    TRAIN,
    C2DSR_FILES,
    describe_data_dir,
    ensure_files,
    resolve_data_dir,
    user_cache_root,
)

DATASET_NAMES = (*NAMED_DATASETS, "synthetic")
LOG_SUFFIXES = (".csv", ".parquet", ".pq")
SPLITS = (*C2DSR_SPLITS, "loo")

__all__ = [
    "CrossDomainDataset", "DataError", "DatasetCard", "EvalCases", "ItemSpace", "TrainExamples",
    "PAD", "DOMAIN_X", "DOMAIN_Y", "DOMAIN_NONE", "DOMAIN_NAMES", "DATASET_NAMES", "SPLITS",
    "load_dataset", "default_split", "DatasetRef",
]


def default_split(name: str | os.PathLike) -> str:
    """"c2dsr" for the named pairs and synthetic, "loo" for interaction logs."""
    return "loo" if _is_log(name) else "c2dsr"


def _int_option(value: Any, key: str) -> int:
    """An integer option (from Python, or a string from the command line); anything else names the option."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
        raise DataError(f"dataset option {key}={value!r} must be an integer")
    return int(value)


def _is_log(name: str | os.PathLike) -> bool:
    return str(name).lower().endswith(LOG_SUFFIXES)


def load_dataset(
    name: str | os.PathLike,
    split: str | None = None,
    data_dir: str | Path | None = None,
    **options: Any,
) -> CrossDomainDataset:
    """Load a dataset by name ("food_kitchen", "movie_book", "synthetic"), a folder holding the six
    C2DSR-format files, or an interaction log path (.csv/.parquet).

    data_dir: explicit folder > env DPGDIFF_DATA_DIR > per-user cache (named pairs). The synthetic
    set is written to data_dir when given, else to the per-user cache.
    Common options: max_len (15). Named pairs: download (True), url (base URL; env DPGDIFF_DATA_URL).
    Synthetic: any field of `SyntheticSpec` (n_users, n_items_x, n_items_y, seed, noise, ...).
    Logs: domains=(x_value, y_value).
    """
    max_len = _int_option(options.pop("max_len", DEFAULT_MAX_LEN), "max_len")
    split = split or default_split(name)
    if _is_log(name):
        from dpgdiff.data.logs import load_log

        if split != "loo":
            raise DataError(f"{name}: interaction logs support only split 'loo', got {split!r}")
        domains = options.pop("domains", None)
        _no_more(options, name)
        return load_log(Path(name), domains=domains, max_len=max_len)

    key = str(name).lower().replace("-", "_")
    if key == "synthetic":
        from dpgdiff.data.synthetic import SyntheticSpec, ensure_synthetic

        spec = SyntheticSpec.from_options(options)
        root = Path(data_dir).expanduser() if data_dir is not None else user_cache_root() / "data"
        folder = ensure_synthetic(spec, root)
        dataset = load_c2dsr_folder(folder, "synthetic", split, max_len, extra_settings={"synthetic": spec.key()})
        dataset.options = {"max_len": max_len, **asdict(spec)}
        return dataset

    if key in NAMED_DATASETS:
        named = NAMED_DATASETS[key]
        if split not in C2DSR_SPLITS:
            raise DataError(f"{key}: split {split!r} is not one of {', '.join(C2DSR_SPLITS)}")
        download = bool(options.pop("download", True))
        url = options.pop("url", None)
        _no_more(options, key)
        folder = resolve_data_dir(data_dir) / named.folder
        needed = C2DSR_FILES if split == "c2dsr" else tuple(f for f in C2DSR_FILES if f != TRAIN)
        hint = {TRAIN: "Split 'c2dsr' needs it; split 'c2dsr-histories' works without it (it trains on the "
                       "evaluation histories): pass --split c2dsr-histories."}
        ensure_files(named, folder, needed, download=download, url=url, hint=hint,
                     where=describe_data_dir(data_dir))
        dataset = load_c2dsr_folder(folder, key, split, max_len, expected_blobs=named.blob_ids)
        dataset.options = {"max_len": max_len}
        return dataset

    if Path(name).is_dir():  # bring your own data in the C2DSR file format
        _no_more(options, name)
        dataset = load_c2dsr_folder(Path(name), Path(name).name, split, max_len)
        dataset.options = {"max_len": max_len}
        return dataset

    raise unknown_dataset_error(name)


def unknown_dataset_error(name: str | os.PathLike) -> DataError:
    """The error for a dataset name that is none of DATASET_NAMES, no folder and no log path, with the closest
    known name when there is one ("did you mean food_kitchen?")."""
    import difflib

    close = difflib.get_close_matches(str(name).lower().replace("-", "_"), DATASET_NAMES, n=1, cutoff=0.6)
    guess = f"; did you mean {close[0]}?" if close else ""
    return DataError(f"unknown dataset {str(name)!r}{guess} (expected one of {', '.join(DATASET_NAMES)}, a folder "
                     f"in C2DSR format, or an interaction log path ending in {', '.join(LOG_SUFFIXES)})")


def check_dataset_name(name: str | os.PathLike) -> None:
    """Raise `unknown_dataset_error` unless `name` is something `load_dataset` can load (without loading it):
    command lines check it before printing anything else."""
    key = str(name).lower().replace("-", "_")
    if not (_is_log(name) or key in DATASET_NAMES or Path(name).is_dir()):
        raise unknown_dataset_error(name)


def _no_more(options: dict[str, Any], name: object) -> None:
    if options:
        raise DataError(f"{name}: unknown dataset option(s) {', '.join(sorted(options))}")
