"""Which dataset to load, as a value: `DatasetRef`, and the command-line flags that describe one.

    ref = DatasetRef("synthetic", options={"n_users": 400})
    dataset = ref.load()                        # dpgdiff.data.load_dataset(name, split, data_dir, **options)

Both command lines (`python -m dpgdiff` and `tune/search.py`) read their dataset flags with
`add_dataset_args` + `dataset_ref_from_args`; the search saves the ref in its resume file (`to_dict`),
its trials use `key()` as their per-process cache key, and checkpoints record `identity(dataset)`
(a ref without data_dir, plus the fingerprint) so `evaluate` can reload the same data.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional

from dpgdiff.data.dataset import CrossDomainDataset, DataError

NAMED_PAIRS = ("food_kitchen", "movie_book")  # the downloadable pairs (`--no-download` applies to them)


@dataclass(frozen=True)
class DatasetRef:
    """Everything `load_dataset` needs: a name (or path), a split, a data folder and loader options."""

    name: str
    split: Optional[str] = None  # None = the dataset's default split
    data_dir: Optional[str] = None  # None = env DPGDIFF_DATA_DIR, else the per-user cache
    options: Mapping[str, Any] = field(default_factory=dict)  # load_dataset keyword options

    def load(self) -> CrossDomainDataset:
        from dpgdiff.data import load_dataset

        return load_dataset(self.name, split=self.split, data_dir=self.data_dir, **dict(self.options))

    def key(self) -> str:
        """A stable text key (JSON, sorted): equal refs, equal keys, whatever the option order."""
        return json.dumps(self.to_dict(), sort_keys=True, default=str)

    def __hash__(self) -> int:
        return hash(self.key())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DatasetRef":
        """Inverse of `to_dict` (also after a JSON round trip: lists of two domain names become tuples)."""
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(data.get("options") or {}).items()}
        return cls(str(data["name"]), data.get("split"), data.get("data_dir"), options)

    @classmethod
    def identity(cls, dataset: CrossDomainDataset) -> dict[str, Any]:
        """name, split, loader options and fingerprint of a loaded dataset: enough to reload it
        (recorded in checkpoints; the data folder is left out, it may differ between machines)."""
        options = getattr(dataset, "options", None) or {}
        log_path = getattr(dataset, "log_path", "")
        return {
            "name": str(dataset.name),
            "split": str(dataset.split),
            "options": {str(k): v for k, v in dict(options).items()},
            "fingerprint": str(dataset.fingerprint),
            **({"path": str(log_path)} if log_path else {}),  # an interaction log: where it was
        }

    @classmethod
    def from_identity(cls, identity: Mapping[str, Any], data_dir: Optional[str] = None,
                      split: Optional[str] = None, data: Optional[str] = None) -> "DatasetRef":
        """The ref that reloads a checkpoint's dataset (optionally from another folder or split). An interaction
        log is found at `data` (its new path), else as its file name in `data_dir`, else at the path the
        checkpoint recorded; the loaded data must still have the checkpoint's fingerprint (the caller checks)."""
        ref = cls.from_dict({**identity, "data_dir": data_dir, "split": split or identity.get("split")})
        if data is None and not _is_log_identity(identity):
            return ref
        return cls(_log_file(identity, data_dir, data), ref.split, None, ref.options)


def _is_log_identity(identity: Mapping[str, Any]) -> bool:
    return bool(identity.get("path")) or identity.get("split") == "loo"


def _log_file(identity: Mapping[str, Any], data_dir: Optional[str], data: Optional[str]) -> str:
    """The path of a checkpoint's interaction log (see `DatasetRef.from_identity`); DataError when it is not there."""
    from pathlib import Path

    from dpgdiff.data import LOG_SUFFIXES

    recorded = identity.get("path")
    if data is not None:
        candidates = [Path(data)]
    elif data_dir is not None:  # the recorded file name, or (checkpoints before paths were recorded) the stem
        names = [Path(recorded).name] if recorded else [f"{identity['name']}{s}" for s in LOG_SUFFIXES]
        candidates = [Path(data_dir) / n for n in names]
    else:
        candidates = [Path(recorded)] if recorded else []
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate.resolve())
    where = ", ".join(map(str, candidates)) or "no path recorded in the checkpoint"
    raise DataError(f"the model was trained on the interaction log {recorded or identity['name']!r}, not found "
                    f"({where}); pass --data PATH (where the file is now) or --data-dir FOLDER (holding it)")


# ------------------------------------------------------------------------------------- command line


def parse_options(text: Optional[str], flag: str = "--synthetic") -> dict[str, str]:
    """"a=1,b=2" -> {"a": "1", "b": "2"} (values stay strings; the loader converts and checks them)."""
    options: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise DataError(f"{flag}: expected key=value[,key=value...], got {part!r}")
        options[key.strip()] = value.strip()
    return options


def parse_option(assignment: str, flag: str = "--data-option") -> tuple[str, Any]:
    """"key=value" -> (key, value parsed as YAML: 2000 -> int, 0.5 -> float, text stays text)."""
    import yaml

    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise DataError(f"{flag}: {assignment!r} must look like key=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def add_dataset_args(parser: argparse.ArgumentParser, default: str = "synthetic") -> argparse._ArgumentGroup:
    """The dataset flags of both command lines (read back with `dataset_ref_from_args`)."""
    from dpgdiff.data import SPLITS

    group = parser.add_argument_group("dataset")
    group.add_argument("--dataset", default=default,
                       help="food_kitchen | movie_book | synthetic (default) | path to a .csv/.parquet interaction log")
    group.add_argument("--split", choices=SPLITS, default=None,
                       help="default: c2dsr for named and synthetic data, loo for logs")
    group.add_argument("--data-dir", default=None,
                       help="folder holding Food-Kitchen/ and Movie-Book/ (default: env DPGDIFF_DATA_DIR, "
                            "else the per-user cache); for synthetic data: where its files are written")
    group.add_argument("--synthetic", default=None, metavar="K=V,...",
                       help="synthetic generator options, e.g. n_users=60000,n_items_x=36845,n_items_y=63937,seed=1")
    group.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                       help="any load_dataset option (repeatable; value parsed as YAML), e.g. n_users=2000")
    group.add_argument("--domains", default=None, metavar="X,Y",
                       help="interaction logs: the domain values that are X and Y (default: sorted order)")
    group.add_argument("--max-len", type=int, default=None, help="history length (default 15)")
    group.add_argument("--no-download", action="store_true", help="never download missing files")
    return group


def dataset_ref_from_args(args: argparse.Namespace) -> DatasetRef:
    """The DatasetRef the shared flags describe (bad flags raise DataError naming the flag)."""
    from dpgdiff.data import check_dataset_name

    check_dataset_name(args.dataset)  # a misspelled name: the error, before anything else is printed
    options: dict[str, Any] = {}
    if args.synthetic:
        if str(args.dataset).lower() != "synthetic":
            raise DataError(f"--synthetic only applies to --dataset synthetic, not {args.dataset!r}")
        options.update(parse_options(args.synthetic))
    options.update(parse_option(a) for a in args.data_option)
    if args.domains:
        parts = [p.strip() for p in args.domains.split(",")]
        if len(parts) != 2:
            raise DataError(f"--domains: expected two comma-separated values X,Y, got {args.domains!r}")
        options["domains"] = tuple(parts)
    if args.max_len is not None:
        options["max_len"] = args.max_len
    if args.no_download and str(args.dataset).lower().replace("-", "_") in NAMED_PAIRS:
        options["download"] = False
    return DatasetRef(str(args.dataset), args.split, args.data_dir, options)
