"""Top-k recommendations from a trained checkpoint, in the user's own item ids.

One code path for `python -m dpgdiff recommend` and the MLflow pyfunc model (tune/serving.py):

    rec = Recommender.load("runs/a/best.pt")                  # no dataset files needed
    out = rec.recommend([[12, 55, 301], [7]], domain="y", k=10)
    out[0].items, out[0].scores, out[0].unknown               # raw ids best first, scores, dropped ids

A history is the user's raw item ids, oldest first (dpgdiff/data/ids.py says what a raw id is).
Unknown (or, in logs, ambiguous) ids are dropped and reported; the model sees the last
`max_len` known items, left-padded (spec §1.2). Scores are `model.score` (Eq. 15 for DPG-Diff: K
reverse steps of the configured sampler) over every item of the target domain; every history item
is excluded before the top-k. The reverse-process noise comes from a generator seeded with
`train.seed` for each batch, so the same request returns the same lists (as the evaluation does, spec §3.6).
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from dpgdiff.config import Config
from dpgdiff.data.dataset import DOMAIN_NAMES, DataError, left_pad
from dpgdiff.data.ids import ItemIdMap

DEFAULT_K = 10
DEFAULT_BATCH_SIZE = 256  # histories per model.score call


class RecommendError(ValueError):
    """A request cannot be answered (empty or invalid history, bad k or domain); the message names the row."""

    def __init__(self, reason: str, row: Optional[int] = None) -> None:
        self.reason, self.row = reason, row
        super().__init__(reason if row is None else f"row {row}: {reason}")


@dataclass
class Recommendation:
    """One history's answer: raw item ids best first, their scores, and the history ids that were dropped."""

    items: list[Any]
    scores: list[float]
    unknown: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "scores": self.scores, "unknown": self.unknown}


class Recommender:
    """A trained model, its id map and its inference setting (sampler, K reverse steps)."""

    def __init__(self, model: torch.nn.Module, config: Config, ids: ItemIdMap, *,
                 sampler: Optional[str] = None, infer_steps: Optional[int] = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, info: Optional[dict[str, Any]] = None) -> None:
        d = config.diffusion
        self.model, self.config, self.ids = model.eval(), config, ids
        self.sampler = sampler or d.sampler
        self.infer_steps = int(infer_steps if infer_steps is not None else (d.infer_steps or d.steps))  # 0: refused
        if self.sampler not in ("ddpm", "ddim"):
            raise RecommendError(f"sampler {self.sampler!r}: expected ddpm or ddim")
        if not 1 <= self.infer_steps <= d.steps:
            raise RecommendError(f"infer_steps {self.infer_steps}: must be in 1..{d.steps} (the model's diffusion.steps)")
        if batch_size < 1:
            raise RecommendError(f"batch_size {batch_size}: must be >= 1")
        self.batch_size = int(batch_size)
        self.info = info or {}
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, checkpoint: str | Path, *, device: str = "cpu", sampler: Optional[str] = None,
             infer_steps: Optional[int] = None, batch_size: int = DEFAULT_BATCH_SIZE,
             data_dir: Optional[str] = None) -> "Recommender":
        """best.pt (or a checkpoint folder) -> Recommender. The id map comes from the checkpoint; a
        checkpoint saved before it was recorded reloads its dataset (C2DSR-format data only)."""
        from dpgdiff.training import load_model, resolve_device

        _, config, info = load_model(checkpoint)  # metadata only
        meta = info["dataset"]
        if meta.get("item_ids"):
            ids = ItemIdMap.from_dict(meta["item_ids"], source=f"{checkpoint} (item_ids)")
        elif meta.get("split") == "loo":
            raise DataError(f"{checkpoint}: trained on an interaction log before checkpoints recorded the raw "
                            "item ids; retrain it to serve it in the log's own ids")
        else:
            from dpgdiff.data import load_dataset

            ids = ItemIdMap.from_dataset(load_dataset(meta["name"], split=meta["split"], data_dir=data_dir,
                                                      **meta["options"]))
        # build_model needs the id space and max_len, not the sequences or item counts (those only feed
        # training-time augmentations and start values that the saved weights replace); the fingerprint makes
        # load_model's dataset check pass for the right checkpoint.
        shell = types.SimpleNamespace(items=ids.items, max_len=ids.max_len, train_sequences=[],
                                      name=meta.get("name"), split=meta.get("split"),
                                      fingerprint=meta.get("fingerprint"))
        model, config, info = load_model(checkpoint, shell, device=resolve_device(device))
        return cls(model, config, ids, sampler=sampler, infer_steps=infer_steps, batch_size=batch_size, info=info)

    @property
    def domains(self) -> tuple[str, ...]:
        """The domain names a request may use."""
        return tuple(dict.fromkeys((*DOMAIN_NAMES, *self.ids.domain_names)))

    def recommend(self, histories: Sequence[Sequence[Any]], domain: Any | Sequence[Any] = "y",
                  k: int | Sequence[int] = DEFAULT_K) -> list[Recommendation]:
        """histories: N lists of raw ids, oldest first; domain and k: one value or one per history.

        Returns N Recommendations. Raises RecommendError (naming the row) for an empty history, one
        with no known id, a non-list history, an unknown domain or k < 1."""
        n = len(histories)
        domains = _per_row(domain, n, "domain")
        ks = _per_row(k, n, "k")
        rows: list[tuple[list[int], list[Any], int, int]] = []  # (known internal ids, unknown, domain, k)
        for i, (history, dom, kk) in enumerate(zip(histories, domains, ks)):
            rows.append(self._parse_row(i, history, dom, kk))

        out: list[Optional[Recommendation]] = [None] * n
        from dpgdiff.training import make_scorer

        for dom in (0, 1):
            index = [i for i, r in enumerate(rows) if r[2] == dom]
            for start in range(0, len(index), self.batch_size):
                chunk = index[start:start + self.batch_size]
                # A fresh seeded generator per batch: an answer depends on its batch only, not on
                # what else the call held.
                scorer = make_scorer(self.model, self.device, sampler=self.sampler, infer_steps=self.infer_steps,
                                     seed=self.config.train.seed, precision=self.config.train.precision)
                self._score_chunk(scorer, dom, chunk, rows, out)
        return out  # type: ignore[return-value]

    def _parse_row(self, i: int, history: Any, domain: Any, k: Any) -> tuple[list[int], list[Any], int, int]:
        if isinstance(history, (str, bytes, dict)) or not hasattr(history, "__len__"):
            raise RecommendError(f"history must be a list of item ids (oldest first), "
                                 f"got {type(history).__name__} {str(history)[:60]!r}", i)
        if len(history) == 0:
            raise RecommendError("empty history; give at least one item id", i)
        try:
            dom = self.ids.domain(domain)
        except DataError as exc:
            raise RecommendError(str(exc), i) from None
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) and not (
                isinstance(k, (float, np.floating)) and float(k).is_integer()):
            raise RecommendError(f"k must be an integer >= 1, got {k!r}", i)
        if int(k) < 1:
            raise RecommendError(f"k must be >= 1, got {int(k)}", i)
        known, unknown = self.ids.to_internal(list(history))
        if not known:
            raise RecommendError(f"none of the history's item ids is an item of this model's dataset: "
                                 f"{unknown[:10]!r}{' ...' if len(unknown) > 10 else ''}", i)
        return known, unknown, dom, int(k)

    def _score_chunk(self, scorer: Any, dom: int, chunk: list[int], rows: list, out: list) -> None:
        """Score one batch of same-domain rows, mask their history items, fill out[i] for i in chunk."""
        items = self.ids.items
        histories = left_pad([np.asarray(rows[i][0], dtype=np.int64) for i in chunk], self.ids.max_len)
        scores = scorer(torch.from_numpy(histories), dom)  # (B, n_items(dom)), column j = local item j
        offset, n_items = items.offset(dom), items.n_items(dom)
        for row, i in enumerate(chunk):  # every history item of the target domain is excluded, not just the last max_len
            local = np.asarray(rows[i][0], dtype=np.int64) - offset
            local = local[(local >= 0) & (local < n_items)]
            if len(local):
                scores[row, torch.from_numpy(local).to(scores.device)] = float("-inf")
        kmax = min(max(rows[i][3] for i in chunk), n_items)
        top_scores, top_local = torch.topk(scores, kmax, dim=1)
        top_scores, top_local = top_scores.cpu().numpy(), top_local.cpu().numpy()
        for row, i in enumerate(chunk):
            keep = np.isfinite(top_scores[row, :rows[i][3]])  # fewer items than k once the history is excluded
            local = top_local[row, :rows[i][3]][keep]
            out[i] = Recommendation(items=self.ids.to_raw(items.to_internal(local, dom)),
                                    scores=[float(s) for s in top_scores[row, :rows[i][3]][keep]],
                                    unknown=rows[i][1])


def _per_row(value: Any, n: int, name: str) -> list[Any]:
    """One value for every row, or a sequence of n values."""
    if isinstance(value, (str, bytes, int, float, np.generic)) or value is None:
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise RecommendError(f"{name}: {len(values)} values for {n} histories")
    return values


# ------------------------------------------------------------------------------------ request files

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_ID_SEPARATORS = re.compile(r"[\s,;]+")


@dataclass
class Request:
    """One history read from a file: `extra` holds the other columns/keys (e.g. a user id), echoed back."""

    history: list[Any]
    domain: Any = None  # None: the caller's default
    k: Optional[int] = None
    line: int = 0  # file line, for error messages
    extra: dict[str, Any] = field(default_factory=dict)


def read_requests(path: str | Path) -> list[Request]:
    """A CSV (column `history`: ids separated by spaces, commas or semicolons; optional `domain`, `k`)
    or JSON-lines file (objects with a `history` list, optional `domain`, `k`) -> requests.
    Other columns/keys are kept in Request.extra. Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in (".csv", *JSONL_SUFFIXES):
        raise DataError(f"{path}: expected a .csv or JSON-lines ({', '.join(JSONL_SUFFIXES)}) file")
    try:
        return _read_csv(path) if suffix == ".csv" else _read_jsonl(path)
    except UnicodeDecodeError as exc:  # a Latin-1 export or a binary file: name the file and what is expected
        raise DataError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                        "requests must be UTF-8: save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def _request(path: Path, line: int, record: dict[str, Any], history: Any) -> Request:
    k = record.pop("k", None)
    if k is not None and str(k).strip() != "":
        try:
            k = int(str(k).strip()) if not isinstance(k, int) else k
        except ValueError:
            raise DataError(f"{path}:{line}: k {k!r} is not an integer") from None
    else:
        k = None
    domain = record.pop("domain", None)
    domain = None if domain is None or str(domain).strip() == "" else domain
    return Request(history=history, domain=domain, k=k, line=line, extra=record)


def _read_csv(path: Path) -> list[Request]:
    import csv

    out = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "history" not in reader.fieldnames:
            raise DataError(f"{path}:1: expected a header with a 'history' column, got {reader.fieldnames}")
        try:
            for record in reader:
                line = reader.line_num
                history = [t for t in _ID_SEPARATORS.split(record.pop("history") or "") if t]
                out.append(_request(path, line, dict(record), history))
        except csv.Error as exc:  # e.g. a NUL byte: not a text CSV
            raise DataError(f"{path}:{reader.line_num + 1}: not a readable CSV line ({exc}); expected UTF-8 text "
                            "with a 'history' column") from None
    return out


def _read_jsonl(path: Path) -> list[Request]:
    import json

    out = []
    with open(path, encoding="utf-8") as handle:
        for line, text in enumerate(handle, 1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or "history" not in record:
                raise DataError(f"{path}:{line}: expected an object with a 'history' list of item ids")
            history = record.pop("history")
            if not isinstance(history, list):
                raise DataError(f"{path}:{line}: 'history' must be a list of item ids, got {type(history).__name__}")
            out.append(_request(path, line, record, history))
    return out


def write_results(path: str | Path, requests: Sequence[Request], results: Sequence[Recommendation],
                  domains: Sequence[Any]) -> None:
    """Write one record per request (its extra fields, domain, items, scores, unknown) atomically:
    JSON lines for .jsonl/.ndjson/.json, CSV (lists space-separated) for .csv."""
    import csv
    import io
    import json

    from dpgdiff.files import atomic_write_text

    path = Path(path)
    records = [{**req.extra, "domain": dom, **res.to_dict()} for req, res, dom in zip(requests, results, domains)]
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        text = "".join(json.dumps(r, default=str) + "\n" for r in records)
    elif suffix == ".csv":
        buffer = io.StringIO()
        columns = list(dict.fromkeys(key for r in records for key in r)) or ["domain", "items", "scores", "unknown"]
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in records:
            writer.writerow({**r, "items": " ".join(map(str, r["items"])),
                             "scores": " ".join(f"{s:.6g}" for s in r["scores"]),
                             "unknown": " ".join(map(str, r["unknown"]))})
        text = buffer.getvalue()
    else:
        raise DataError(f"{path}: output must end in .csv or one of {', '.join(JSONL_SUFFIXES)}")
    atomic_write_text(path, text)


def with_setting(rec: Recommender, **changes: Any) -> Recommender:
    """The same model and ids under another sampler / infer_steps / batch_size (no reload)."""
    kwargs = dict(sampler=rec.sampler, infer_steps=rec.infer_steps, batch_size=rec.batch_size, info=rec.info)
    kwargs.update(changes)
    return Recommender(rec.model, rec.config, rec.ids, **kwargs)


__all__ = ["Recommender", "Recommendation", "RecommendError", "Request", "DEFAULT_K", "read_requests",
           "write_results", "with_setting"]
