"""Deterministic synthetic cross-domain data with the paper's three signal types (Fig. 1).

Every domain's items are split into topic clusters. The first `shared_frac` of the topics exist in
both domains (one cluster in X and one in Y, linked by the topic): a user's *domain-invariant*
interests are a few of those. Each user also has one X-only and one Y-only topic (*domain-specific*
interests), and a `noise` share of clicks are uniform random items. Within a cluster, items follow a
Zipf law, and topics have Zipf popularity, so popularity is a real but beatable baseline.

The generator writes the C2DSR file format (with its quirks: day-level timestamps with ties, and a
Y item moved to the end of lines whose true last item is X), so the same reader loads it and the
stable-sort rule matters. Files are cached under the data dir, keyed by the parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from dpgdiff.data.dataset import DataError
from dpgdiff.data.sources import C2DSR_FILES, TEST, TRAIN, USERS, VALID, VOCAB_X, VOCAB_Y

GENERATOR_VERSION = 1  # bump when the output for given parameters changes (it keys the cache)
_DAY = 86_400
_START = 1_262_304_000  # 2010-01-01 00:00 UTC


@dataclass(frozen=True)
class SyntheticSpec:
    """Generator parameters. Defaults: small enough for a full search on 2 CPU cores."""

    n_users: int = 2000
    # > 1,000 + max_len items per domain, so 999 sampled negatives outside any history exist (spec §5.2).
    n_items_x: int = 1200
    n_items_y: int = 1200
    seed: int = 0
    noise: float = 0.1  # share of clicks that are uniform random items of the domain
    topic_size: int = 25  # items per topic cluster
    shared_frac: float = 0.5  # share of each domain's topics that also exist in the other domain
    n_shared_interests: int = 2  # domain-invariant topics per user
    p_shared: float = 0.6  # share of non-noise clicks from the invariant topics (rest: domain-specific)
    stickiness: float = 0.7  # probability that a click keeps the previous click's interest (sequential signal)
    p_y: float = 0.5  # probability that a click is in domain Y
    zipf: float = 1.0  # popularity exponent within a cluster (and 0.7x this across topics)
    min_seq_len: int = 6  # sequence lengths, target included (C2DSR evaluation lines: 6..15)
    max_seq_len: int = 15
    max_train_seqs: int = 3  # each user has 1..max_train_seqs training sequences before its evaluation one
    p_tie: float = 0.3  # probability that a click has the same day as the previous one

    def validate(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise DataError(f"synthetic option {what}")

        need(self.n_users >= 4, f"n_users must be >= 4, got {self.n_users}")
        for name in ("n_items_x", "n_items_y"):
            need(getattr(self, name) >= 2 * self.topic_size, f"{name} must be >= 2*topic_size = {2 * self.topic_size}")
        need(self.topic_size >= self.max_seq_len, f"topic_size must be >= max_seq_len ({self.max_seq_len}), got {self.topic_size}")
        for name in ("noise", "shared_frac", "p_shared", "stickiness", "p_y", "p_tie"):
            need(0.0 <= getattr(self, name) <= 1.0, f"{name} must be in [0, 1], got {getattr(self, name)}")
        need(0.0 < self.p_y < 1.0, f"p_y must be strictly between 0 and 1, got {self.p_y}")
        need(4 <= self.min_seq_len <= self.max_seq_len,
             f"need 4 <= min_seq_len <= max_seq_len, got {self.min_seq_len}, {self.max_seq_len}")
        need(self.max_train_seqs >= 1, f"max_train_seqs must be >= 1, got {self.max_train_seqs}")
        need(self.n_shared_interests >= 1, f"n_shared_interests must be >= 1, got {self.n_shared_interests}")
        need(self.zipf >= 0, f"zipf must be >= 0, got {self.zipf}")

    @classmethod
    def from_options(cls, options: dict) -> "SyntheticSpec":
        """Build from keyword options (values may be strings from the CLI); unknown keys are errors."""
        known = {f.name: f.type for f in fields(cls)}
        values = {}
        for key, value in options.items():
            if key not in known:
                raise DataError(f"unknown synthetic option {key!r}; known: {', '.join(known)}")
            cast = float if known[key] in ("float", float) else int
            try:
                values[key] = cast(value)
            except (TypeError, ValueError):
                raise DataError(f"synthetic option {key}={value!r} is not a valid {cast.__name__}") from None
        spec = cls(**values)
        spec.validate()
        return spec

    def key(self) -> str:
        blob = json.dumps({"version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------ generation


def _clusters(rng: np.random.Generator, n_items: int, topic_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Random partition of local items 0..n-1 into clusters of about topic_size.

    Returns (members, bounds): cluster c holds members[bounds[c]:bounds[c+1]], in popularity order.
    """
    n_clusters = max(2, n_items // topic_size)
    members = rng.permutation(n_items)
    bounds = np.linspace(0, n_items, n_clusters + 1).round().astype(np.int64)
    return members, bounds


def generate(spec: SyntheticSpec) -> dict[str, object]:
    """All sequences as flat arrays, vectorised over users and tokens.

    Returns per sequence: seq_user, seq_is_eval, seq_len; per user: in_valid; per token (sequences
    concatenated, in time order): global_id (C2DSR file id), dom (0 = X, 1 = Y), ts (unix seconds).
    """
    spec.validate()
    rng = np.random.default_rng(spec.seed)
    n_items = (spec.n_items_x, spec.n_items_y)
    members, bounds = zip(*(_clusters(rng, n, spec.topic_size) for n in n_items))
    n_clusters = [len(b) - 1 for b in bounds]
    n_shared = max(1, int(round(spec.shared_frac * min(n_clusters))))
    n_shared = min(n_shared, min(n_clusters) - 1)  # keep >= 1 domain-specific topic per domain
    n_inv = min(spec.n_shared_interests, n_shared)

    # Users' interests: n_inv shared topics (ids 0..n_shared-1, the same cluster index in both domains),
    # and one domain-specific cluster per domain (ids n_shared..n_clusters-1 of that domain).
    # Zipf-weighted draw of n_inv distinct topics per user: redraw a column where it repeats an earlier one.
    cum = np.cumsum(_zipf_weights(n_shared, 0.7 * spec.zipf))
    shared = np.zeros((spec.n_users, n_inv), dtype=np.int64)
    for col in range(n_inv):
        todo = np.arange(spec.n_users)
        while len(todo):
            shared[todo, col] = np.minimum(np.searchsorted(cum, rng.random(len(todo)), side="right"), n_shared - 1)
            todo = todo[(shared[todo, :col] == shared[todo, col : col + 1]).any(axis=1)]
    specific = np.stack(
        [n_shared + rng.choice(n_c - n_shared, size=spec.n_users, p=_zipf_weights(n_c - n_shared, 0.7 * spec.zipf))
         for n_c in n_clusters],
        axis=1,
    )  # (U, 2)

    # Sequences: 1..max_train_seqs training sequences, then the evaluation sequence, per user.
    n_train = rng.integers(1, spec.max_train_seqs + 1, size=spec.n_users)
    seq_user = np.repeat(np.arange(spec.n_users), n_train + 1)
    seq_is_eval = np.zeros(len(seq_user), dtype=bool)
    seq_is_eval[np.cumsum(n_train + 1) - 1] = True
    seq_len = rng.integers(spec.min_seq_len, spec.max_seq_len + 1, size=len(seq_user))
    tok_seq = np.repeat(np.arange(len(seq_user)), seq_len)
    tok_user = seq_user[tok_seq]
    seq_start = np.cumsum(seq_len) - seq_len
    tok_pos = np.arange(len(tok_seq)) - seq_start[tok_seq]
    n_tok = len(tok_seq)

    # Domains: random, but positions 0 and 1 are one X and one Y, so every history has both domains.
    dom = (rng.random(n_tok) < spec.p_y).astype(np.int64)
    first_y = rng.integers(0, 2, size=len(seq_user))
    dom[tok_pos == 0] = first_y
    dom[tok_pos == 1] = 1 - first_y

    # Which interest drives each click: one of the n_inv invariant topics (slot 0..n_inv-1) or the
    # domain-specific one (slot n_inv). With probability `stickiness` a click keeps the previous
    # click's interest (also across domains: an invariant topic continues in the other domain).
    fresh_slot = np.where(rng.random(n_tok) < spec.p_shared, rng.integers(0, n_inv, size=n_tok), n_inv)
    fresh = (rng.random(n_tok) >= spec.stickiness) | (tok_pos == 0)
    slot = fresh_slot[np.maximum.accumulate(np.where(fresh, np.arange(n_tok), 0))]
    is_noise = rng.random(n_tok) < spec.noise

    def draw(idx: np.ndarray, allow_signal: bool) -> np.ndarray:
        """Local item ids for tokens idx (same interests every time, so redraws keep the signal mix)."""
        d = dom[idx]
        noise = is_noise[idx] if allow_signal else np.ones(len(idx), dtype=bool)
        cluster = np.where(
            slot[idx] < n_inv,
            shared[tok_user[idx], np.minimum(slot[idx], n_inv - 1)],
            specific[tok_user[idx], d],
        )
        out = np.empty(len(idx), dtype=np.int64)
        for dd in (0, 1):
            sel = d == dd
            lo, hi = bounds[dd][cluster[sel]], bounds[dd][cluster[sel] + 1]
            rank = _zipf_ranks(rng, hi - lo, spec.zipf)
            local = members[dd][lo + rank]
            random_local = rng.integers(0, n_items[dd], size=int(sel.sum()))
            out[sel] = np.where(noise[sel], random_local, local)
        return out

    item = draw(np.arange(n_tok), allow_signal=True)
    # No item twice in one sequence (as in the C2DSR files): redraw repeats, after a few rounds as noise.
    for round_ in range(100):
        key = (tok_seq * 2 + dom) * (max(n_items) + 1) + item
        order = np.argsort(key, kind="stable")  # stable: the first occurrence in a sequence is kept
        dup = order[1:][key[order][1:] == key[order][:-1]]
        if len(dup) == 0:
            break
        item[dup] = draw(dup, allow_signal=round_ < 5)
    else:  # pragma: no cover - needs absurd parameters; validate() rules them out
        raise DataError("synthetic generator could not remove repeated items; use more items per domain")

    # Day-level timestamps: ties with probability p_tie, otherwise a 1+ day gap; 30+ days between sequences.
    gap = np.where(rng.random(n_tok) < spec.p_tie, 0, rng.geometric(0.25, size=n_tok))
    gap[tok_pos == 0] = 30 + rng.integers(0, 60, size=len(seq_user))
    user_first_tok = np.cumsum(np.bincount(tok_user, minlength=spec.n_users)) - np.bincount(tok_user, minlength=spec.n_users)
    days = np.cumsum(gap)
    days = days - days[user_first_tok][tok_user] + rng.integers(0, 1500, size=spec.n_users)[tok_user]
    ts = _START + days * _DAY

    in_valid = rng.random(spec.n_users) < 0.5  # each user's evaluation line goes to valid or test
    global_id = np.where(dom == 0, item, spec.n_items_x + item)  # C2DSR file ids: Y offset by |A|
    return {
        "seq_user": seq_user, "seq_is_eval": seq_is_eval, "seq_len": seq_len, "in_valid": in_valid,
        "global_id": global_id, "dom": dom, "ts": ts,
    }


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


def _zipf_ranks(rng: np.random.Generator, sizes: np.ndarray, exponent: float) -> np.ndarray:
    """One Zipf-distributed rank in 0..size-1 per entry of `sizes` (inverse CDF, vectorised)."""
    if len(sizes) == 0:
        return np.zeros(0, dtype=np.int64)
    cum = np.cumsum(1.0 / np.arange(1, int(sizes.max()) + 1) ** exponent)
    u = rng.random(len(sizes)) * cum[sizes - 1]
    return np.minimum(np.searchsorted(cum, u, side="right"), sizes - 1)


# ------------------------------------------------------------------------------------ files


def write_files(spec: SyntheticSpec, folder: Path) -> None:
    """Write the six C2DSR files of `generate(spec)` into `folder` (which must exist)."""
    g = generate(spec)
    seq_user, seq_is_eval, seq_len = g["seq_user"], g["seq_is_eval"], g["seq_len"]
    global_id, dom, ts = g["global_id"], g["dom"], g["ts"]
    # The date field: the same instant shown in UTC+8, as in the released files.
    day_str = {int(t): (datetime(1970, 1, 1) + timedelta(seconds=int(t) + 8 * 3600)).strftime("%Y-%m-%d %H:%M:%S")
               for t in np.unique(ts)}
    tokens = [f"{i}|{t}|{day_str[t]}|" for i, t in zip(global_id.tolist(), ts.tolist())]
    doms = dom.tolist()
    stamps = ts.tolist()
    lines = {TRAIN: [], VALID: [], TEST: []}
    start = 0
    for s, (user, is_eval, n) in enumerate(zip(seq_user.tolist(), seq_is_eval.tolist(), seq_len.tolist())):
        order = list(range(start, start + n))
        if doms[order[-1]] == 0:
            # C2DSR quirk: a line whose last item is X has an earlier Y item moved to its end. Only
            # a Y item with a timestamp of its own is moved, so the stable sort restores the order.
            day_count: dict[int, int] = {}
            for k in order:
                day_count[stamps[k]] = day_count.get(stamps[k], 0) + 1
            movable = [k for k in order[:-1] if doms[k] == 1 and day_count[stamps[k]] == 1]
            if movable:
                order.remove(movable[-1])
                order.append(movable[-1])
        target = (VALID if g["in_valid"][user] else TEST) if is_eval else TRAIN
        lines[target].append(f"{user}\t{s}\t" + "\t".join(tokens[k] for k in order))
        start += n
    texts = {
        VOCAB_X: [f"{j}\tSX{j:08d}\t{j}" for j in range(spec.n_items_x)],
        VOCAB_Y: [f"{spec.n_items_x + j}\tSY{j:08d}\t{j}" for j in range(spec.n_items_y)],
        USERS: [f"SU{u:08d}\t{u}" for u in range(spec.n_users)],
        **lines,
    }
    for name in C2DSR_FILES:
        (folder / name).write_text("\n".join(texts[name]) + "\n", encoding="utf-8")


def ensure_synthetic(spec: SyntheticSpec, root: Path) -> Path:
    """The folder root/synthetic-<key> holding the files for `spec`, generating it if needed.

    Generation goes to a temp folder that is renamed into place, so concurrent loaders (parallel
    trials) never see half-written files; whoever renames second just uses the first one's copy.
    """
    folder = root / f"synthetic-{spec.key()}"
    if all((folder / name).is_file() for name in C2DSR_FILES):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        write_files(spec, tmp)
        (tmp / "spec.json").write_text(json.dumps({"version": GENERATOR_VERSION, **asdict(spec)}, indent=2) + "\n")
        try:
            os.rename(tmp, folder)
        except OSError:
            if not all((folder / name).is_file() for name in C2DSR_FILES):
                raise DataError(f"{folder}: exists but lacks some of {', '.join(C2DSR_FILES)}; remove it") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
