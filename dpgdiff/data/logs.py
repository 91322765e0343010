"""Bring-your-own data: a generic two-domain interaction log (CSV or Parquet) with a leave-one-out split.

Columns: user_id, item_id, domain, timestamp (any order; extra columns are ignored). Exactly two
domain values; the first in sorted order is X unless `domains=(x_value, y_value)` says otherwise.
Per user, interactions are sorted stably by timestamp (ties keep file order). With n >= 3
interactions: the last one is the test case (history = the n-1 before it), the second-to-last the
validation case (history = the n-2 before it), and those n-2 items are the training sequence, so
no evaluation target is a training target. Users with fewer than 3 interactions only train.
Raw item ids map to internal ids per domain in sorted order (deterministic); the same raw id in
both domains is two different items.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from dpgdiff.data.c2dsr import DEFAULT_MAX_LEN, fingerprint
from dpgdiff.data.dataset import CrossDomainDataset, DataError, EvalCases, ItemSpace, left_pad
from dpgdiff.data.sources import derived_cache_dir

COLUMNS = ("user_id", "item_id", "domain", "timestamp")


def _read_table(path: Path) -> tuple[pd.DataFrame, int]:
    """The raw table and the file line of its row 0 (2 for CSV: line 1 is the header; 0 = no lines)."""
    if not path.is_file():
        raise DataError(f"{path}: interaction log not found")
    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=True), 2
        return pd.read_parquet(path), 0
    except (ValueError, OSError, ImportError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read as {path.suffix.lstrip('.')} ({type(exc).__name__}: {exc})") from None


def _where(path: Path, row: int, line0: int, column: str) -> str:
    place = f"line {row + line0}" if line0 else f"row {row + 1}"  # CSV: file line; Parquet: 1-based row
    return f"{path}: {place}, column {column!r}"


def _timestamps(path: Path, values: pd.Series, line0: int) -> np.ndarray:
    """float64 timestamps: numbers as given, otherwise parsed dates (as seconds since the epoch)."""
    numeric = pd.to_numeric(values, errors="coerce")
    if not numeric.isna().any():
        return numeric.to_numpy(dtype=np.float64)
    if numeric.notna().any():  # a mix of numbers and other text: name the first non-number
        row = int(np.argmax(numeric.isna().to_numpy()))
        raise DataError(f"{_where(path, row, line0, 'timestamp')}: {values.iloc[row]!r} is not a number")
    parsed = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
    if parsed.isna().any():
        row = int(np.argmax(parsed.isna().to_numpy()))
        raise DataError(f"{_where(path, row, line0, 'timestamp')}: {values.iloc[row]!r} is neither a number nor a date")
    return (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=np.float64)


def _codes(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Deterministic dense codes 0..n-1 for raw ids, in sorted order of the distinct ids -> (codes, ids by code).

    Ids compare as text; when every id is a number they sort numerically (text breaks ties, so
    "7" and "007" stay two ids).
    """
    text = pd.Series(values).astype(str)
    uniq = pd.unique(text)
    numbers = pd.to_numeric(pd.Series(uniq), errors="coerce")
    if not numbers.isna().any():
        ordered = [u for _, u in sorted(zip(numbers.tolist(), uniq.tolist()))]
    else:
        ordered = sorted(uniq.tolist())
    return pd.Index(ordered).get_indexer(text).astype(np.int64), [str(u) for u in ordered]


def load_log(path: Path, domains: Sequence[str] | None = None, max_len: int = DEFAULT_MAX_LEN) -> CrossDomainDataset:
    """Load an interaction log with the leave-one-out split (split name "loo")."""
    path = Path(path)
    table, line0 = _read_table(path)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}, "
                        f"found {', '.join(map(str, table.columns))}")
    if len(table) == 0:
        raise DataError(f"{path}: no interactions")
    for column in COLUMNS:
        col = table[column]
        empty = col.isna().to_numpy() | (col.astype(str).str.strip() == "").to_numpy()
        if empty.any():
            row = int(np.argmax(empty))
            raise DataError(f"{_where(path, row, line0, column)}: empty value")

    raw_dom = table["domain"].astype(str).to_numpy()
    found = sorted(set(raw_dom.tolist()))
    if domains is None:
        if len(found) != 2:
            raise DataError(f"{path}: column 'domain' must hold exactly two values, found {len(found)}: {found[:10]}")
        x_val, y_val = found
    else:
        if len(domains) != 2 or str(domains[0]) == str(domains[1]):
            raise DataError(f"{path}: domains must be two different values (x, y), got {domains!r}")
        x_val, y_val = (str(d) for d in domains)
        other = ~np.isin(raw_dom, [x_val, y_val])
        if other.any():
            row = int(np.argmax(other))
            raise DataError(f"{_where(path, row, line0, 'domain')}: {raw_dom[row]!r} is neither {x_val!r} (X) nor {y_val!r} (Y)")
    is_y = raw_dom == y_val
    stamps = _timestamps(path, table["timestamp"], line0)

    # Internal ids: per domain, raw ids in sorted order -> 1..Nx and Nx+1..Nx+Ny.
    raw_item = table["item_id"].to_numpy()
    local = np.empty(len(table), dtype=np.int64)
    raw_ids = []  # per domain: the raw item id of each local index (what serving maps back to)
    for mask in (~is_y, is_y):
        local[mask], ordered = _codes(raw_item[mask])
        raw_ids.append(ordered)
    items = ItemSpace(len(raw_ids[0]), len(raw_ids[1]))
    internal = np.where(is_y, 1 + items.n_items_x + local, 1 + local)

    # Users in sorted order; per user stably by timestamp (np.lexsort is stable: ties keep file order).
    user_idx, users = _codes(table["user_id"].to_numpy())
    n_users = len(users)
    order = np.lexsort((stamps, user_idx))
    seq_items, seq_user = internal[order], user_idx[order]
    bounds = np.flatnonzero(np.diff(seq_user)) + 1
    per_user = np.split(seq_items, bounds)
    user_of = seq_user[np.concatenate([[0], bounds])]

    train, v_hist, v_tgt, v_user, t_hist, t_tgt, t_user = [], [], [], [], [], [], []
    for u, seq in zip(user_of.tolist(), per_user):
        if len(seq) < 3:  # too short for a validation and a test case: training only
            train.append(seq)
            continue
        train.append(seq[:-2])
        v_hist.append(seq[:-2]); v_tgt.append(seq[-2]); v_user.append(u)
        t_hist.append(seq[:-1]); t_tgt.append(seq[-1]); t_user.append(u)
    if not v_tgt:
        raise DataError(f"{path}: no user has >= 3 interactions, so there are no validation/test cases")

    def cases(hist: list, tgt: list, user: list) -> EvalCases:
        target = np.array(tgt, dtype=np.int64)
        return EvalCases(left_pad(hist, max_len), target, items.domain_of(target), np.array(user, dtype=np.int64))

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    settings = {"format": "log", "split": "loo", "max_len": max_len, "files": {path.name: digest}, "domains": [x_val, y_val]}
    fp = fingerprint(settings)
    return CrossDomainDataset(
        name=path.stem,
        split="loo",
        items=items,
        max_len=max_len,
        train_sequences=train,
        valid=cases(v_hist, v_tgt, v_user),
        test=cases(t_hist, t_tgt, t_user),
        fingerprint=fp,
        cache_dir=derived_cache_dir(path.stem, "loo", fp),
        n_users=n_users,
        source=f"{path} (X = {x_val!r}, Y = {y_val!r})",
        files={path.name: digest},
        eval_lengths=np.array([len(h) + 1 for h in v_hist + t_hist], dtype=np.int64),
        options={"max_len": max_len, "domains": [x_val, y_val]},
        raw_item_ids=(raw_ids[0], raw_ids[1]),
        domain_names=(x_val, y_val),
        log_path=str(path.resolve()),
    )
