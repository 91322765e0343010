"""Reader for C2DSR's released file format (Alist/Blist/userlist + traindata/validdata/testdata_new).

Format (../shared/data/README.md): one sequence per line, `user \\t seq \\t item|unix_ts|date| \\t ...`,
X ids 0..|A|-1 and Y ids |A|..|A|+|B|-1 in one shared space, tokens NOT in time order. Each line is
sorted by timestamp with a *stable* sort (ties keep file order: the C2DSR rule, which reproduces
the paper's X/Y counts); in an evaluation line the last item after sorting is the target (spec §1.1).
File ids become internal ids by +1, so 0 is PAD (spec §1.2).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from dpgdiff.data.dataset import (
    CrossDomainDataset,
    DataError,
    EvalCases,
    ItemSpace,
    left_pad,
)
from dpgdiff.data.sources import C2DSR_FILES, TEST, TRAIN, USERS, VALID, VOCAB_X, VOCAB_Y, derived_cache_dir, git_blob_id

C2DSR_SPLITS = ("c2dsr", "c2dsr-histories")
DEFAULT_MAX_LEN = 15


def _lines(path: Path):
    """Yield (line number, line without its end-of-line) for a UTF-8 text file; LF or CRLF."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            for lineno, line in enumerate(handle, 1):
                yield lineno, line.rstrip("\r\n")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None


def read_indexed_list(path: Path, n_fields: int, what: str) -> int:
    """Count the lines of Alist/Blist (n_fields=3) or userlist (n_fields=2), checking every line.

    The last field must be the 0-based line index; only the count is used (README: "Only the line
    count is used by the code").
    """
    count = 0
    for lineno, line in _lines(path):
        parts = line.split("\t")
        if len(parts) != n_fields:
            raise DataError(
                f"{path}:{lineno}: expected {n_fields} tab-separated fields ({what}), got {len(parts)}: {line[:80]!r}"
            )
        index = parts[-1]
        if not index.lstrip("-").isdigit():
            raise DataError(f"{path}:{lineno}: index field {index!r} is not an integer ({what})")
        if int(index) != count:
            raise DataError(f"{path}:{lineno}: index {index} out of order, expected {count} (0-based line number)")
        count += 1
    if count == 0:
        raise DataError(f"{path}: file is empty (expected one line per {what.split(' ')[-1]})")
    return count


def _bad_token(path: Path, lineno: int, tokens: list[str], n_ids: int) -> DataError:
    """The precise error for the first unparsable token of a line (slow path, only on failure)."""
    for col, tok in enumerate(tokens, 3):
        fields = tok.split("|")
        if len(fields) < 2:
            return DataError(f"{path}:{lineno}: field {col}: bad token {tok!r}, expected 'item_id|unix_ts|date|'")
        for value, what in ((fields[0], "item id"), (fields[1], "timestamp")):
            try:
                int(value)
            except ValueError:
                return DataError(f"{path}:{lineno}: field {col}: {what} {value!r} in token {tok!r} is not an integer")
    return DataError(f"{path}:{lineno}: malformed line")


def read_sequences(
    path: Path, n_ids: int, n_users: int, min_items: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Parse one sequence file into time-sorted internal-id arrays and their user indices.

    n_ids = |A| + |B| (file ids must lie in 0..n_ids-1); min_items: 2 for evaluation files
    (a history and a target), 1 for training. Ties in timestamp keep file order (stable sort).
    """
    sequences: list[np.ndarray] = []
    users: list[int] = []
    for lineno, line in _lines(path):
        parts = line.split("\t")
        if len(parts) < 2:
            raise DataError(f"{path}:{lineno}: expected 'user_index<TAB>seq_index<TAB>item tokens...', got {line[:80]!r}")
        for col, (value, what) in enumerate(((parts[0], "user index"), (parts[1], "sequence index")), 1):
            if not value.isdigit():
                raise DataError(f"{path}:{lineno}: field {col}: {what} {value!r} is not a non-negative integer")
        user = int(parts[0])
        if user >= n_users:
            raise DataError(f"{path}:{lineno}: user index {user} out of range (userlist has {n_users} users)")
        tokens = parts[2:]
        if len(tokens) < min_items or not any(tokens):
            kind = "empty sequence" if not any(tokens) else f"sequence of {len(tokens)} item(s)"
            raise DataError(f"{path}:{lineno}: {kind}, need at least {min_items} item tokens")
        try:
            fields = [tok.split("|", 2) for tok in tokens]
            ids = [int(f[0]) for f in fields]
            stamps = [int(f[1]) for f in fields]
        except (ValueError, IndexError):
            raise _bad_token(path, lineno, tokens, n_ids) from None
        low, high = min(ids), max(ids)
        if low < 0 or high >= n_ids:
            bad = low if low < 0 else high
            raise DataError(f"{path}:{lineno}: item id {bad} out of range 0..{n_ids - 1} (|A|+|B| = {n_ids})")
        order = sorted(range(len(ids)), key=stamps.__getitem__)  # stable: ties keep file order
        sequences.append(np.array([ids[i] + 1 for i in order], dtype=np.int64))  # +1: 0 is PAD
        users.append(user)
    if not sequences:  # an empty evaluation file would give 0 cases and a NaN metric much later
        raise DataError(f"{path}: no sequences (empty file); expected one 'user_index<TAB>seq_index<TAB>item "
                        "tokens...' line per user")
    return sequences, np.array(users, dtype=np.int64)


def eval_cases(sequences: list[np.ndarray], users: np.ndarray, items: ItemSpace, max_len: int) -> EvalCases:
    """Last item (by time) = target, everything before it = history (last max_len items, left-padded)."""
    target = np.array([s[-1] for s in sequences], dtype=np.int64)
    return EvalCases(
        history=left_pad([s[:-1] for s in sequences], max_len),
        target=target,
        target_domain=items.domain_of(target),
        user=users.astype(np.int64),
    )


def fingerprint(settings: dict[str, Any]) -> str:
    """sha256 hex over a canonical JSON of the source files' hashes and the split settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def load_c2dsr_folder(
    folder: Path,
    name: str,
    split: str,
    max_len: int = DEFAULT_MAX_LEN,
    expected_blobs: dict[str, tuple[str, ...]] | None = None,
    extra_settings: dict[str, Any] | None = None,
) -> CrossDomainDataset:
    """Load a folder in C2DSR format with split "c2dsr" (train on traindata_new.txt) or
    "c2dsr-histories" (train on the evaluation histories; traindata_new.txt is not read).

    expected_blobs: known git blob ids; a file that differs gets a warning (numbers would not be
    comparable with published ones). extra_settings go into the fingerprint (e.g. generator options).
    """
    if split not in C2DSR_SPLITS:
        raise DataError(f"{folder}: split {split!r} is not one of {', '.join(C2DSR_SPLITS)} for C2DSR-format data")
    if max_len < 1:
        raise DataError(f"max_len must be >= 1, got {max_len}")
    needed = C2DSR_FILES if split == "c2dsr" else tuple(f for f in C2DSR_FILES if f != TRAIN)
    for fname in needed:
        if not (folder / fname).is_file():
            advice = (" (use split 'c2dsr-histories', which trains on the evaluation histories: --split "
                      "c2dsr-histories)" if fname == TRAIN else "")
            raise DataError(f"{folder / fname}: file missing from the dataset folder{advice}")
    blobs = {fname: git_blob_id(folder / fname) for fname in needed}
    for fname, blob in blobs.items():
        accepted = (expected_blobs or {}).get(fname)
        if accepted and blob not in accepted:
            warnings.warn(
                f"{folder / fname}: git blob id {blob} differs from the published {accepted[0]}; "
                "results will not be comparable with the paper's",
                stacklevel=2,
            )

    n_x = read_indexed_list(folder / VOCAB_X, 3, "orig_id, ASIN, local_index of a domain-X item")
    n_y = read_indexed_list(folder / VOCAB_Y, 3, "orig_id, ASIN, local_index of a domain-Y item")
    n_users = read_indexed_list(folder / USERS, 2, "reviewer id, user_index of a user")
    items = ItemSpace(n_x, n_y)
    valid_seqs, valid_users = read_sequences(folder / VALID, n_x + n_y, n_users, min_items=2)
    test_seqs, test_users = read_sequences(folder / TEST, n_x + n_y, n_users, min_items=2)
    if split == "c2dsr":
        train_seqs, _ = read_sequences(folder / TRAIN, n_x + n_y, n_users, min_items=1)
    else:
        # The history part only, so no evaluation target is ever a training target.
        train_seqs = [s[:-1] for s in valid_seqs + test_seqs]

    settings = {"format": "c2dsr", "split": split, "max_len": max_len, "files": blobs, **(extra_settings or {})}
    fp = fingerprint(settings)
    return CrossDomainDataset(
        name=name,
        split=split,
        items=items,
        max_len=max_len,
        train_sequences=train_seqs,
        valid=eval_cases(valid_seqs, valid_users, items, max_len),
        test=eval_cases(test_seqs, test_users, items, max_len),
        fingerprint=fp,
        cache_dir=derived_cache_dir(name, split, fp),
        n_users=n_users,
        source=str(folder),
        files=blobs,
        eval_lengths=np.array([len(s) for s in valid_seqs + test_seqs], dtype=np.int64),
    )

