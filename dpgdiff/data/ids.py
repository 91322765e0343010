"""The user's own item ids <-> internal ids (spec §1.2), as recorded in a checkpoint for serving.

Raw ids are what the user's files hold:
- C2DSR format (food_kitchen, movie_book, synthetic, a C2DSR folder): the global item id of the
  sequence files (X 0..|A|-1, Y |A|..|A|+|B|-1); internal id = raw id + 1. Raw ids are ints.
- Interaction logs: the `item_id` column's text, per domain in sorted order (dpgdiff/data/logs.py).
  The same text in both domains is two items: such an id is ambiguous in a mixed history and must be
  written `x:ID` / `y:ID` (or `<domain value>:ID`). Raw ids are strings.

    ids = ItemIdMap.from_dataset(dataset)        # what training saves (ids.to_dict(): plain types)
    ids = ItemIdMap.from_dict(checkpoint["dataset"]["item_ids"])
    internal, unknown = ids.to_internal(["12", 55, "bogus"])
    raw = ids.to_raw(np.array([13, 14]))
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from dpgdiff.data.dataset import DOMAIN_NAMES, DOMAIN_X, DOMAIN_Y, DataError, ItemSpace

SCHEME_C2DSR = "c2dsr-global"  # raw id = global file id = internal id - 1
SCHEME_RAW = "raw"  # raw ids listed per domain (interaction logs)
_AMBIGUOUS = -1  # marker in the lookup table: the raw id is an item of both domains


@dataclass(frozen=True)
class ItemIdMap:
    """The id space of one dataset, without its sequences: enough to build a model and map ids."""

    n_items_x: int
    n_items_y: int
    max_len: int
    raw_x: Optional[tuple[str, ...]] = None  # SCHEME_RAW: raw id of each X local index; None = C2DSR scheme
    raw_y: Optional[tuple[str, ...]] = None
    domain_names: tuple[str, str] = DOMAIN_NAMES  # logs: the domain column's X and Y values

    @property
    def items(self) -> ItemSpace:
        return ItemSpace(self.n_items_x, self.n_items_y)

    @property
    def scheme(self) -> str:
        return SCHEME_C2DSR if self.raw_x is None else SCHEME_RAW

    # ---------------------------------------------------------------------- (de)serialisation

    @classmethod
    def from_dataset(cls, dataset: Any) -> "ItemIdMap":
        raw = getattr(dataset, "raw_item_ids", None)
        return cls(
            n_items_x=int(dataset.items.n_items_x), n_items_y=int(dataset.items.n_items_y),
            max_len=int(dataset.max_len),
            raw_x=tuple(raw[0]) if raw is not None else None, raw_y=tuple(raw[1]) if raw is not None else None,
            domain_names=tuple(str(d) for d in getattr(dataset, "domain_names", DOMAIN_NAMES)),  # type: ignore[arg-type]
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so it loads with torch.load(weights_only=True) and JSON."""
        out: dict[str, Any] = {"scheme": self.scheme, "n_items_x": self.n_items_x, "n_items_y": self.n_items_y,
                               "max_len": self.max_len, "domains": list(self.domain_names)}
        if self.raw_x is not None:
            out["raw_x"], out["raw_y"] = list(self.raw_x), list(self.raw_y or ())
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "item id map") -> "ItemIdMap":
        try:
            scheme = d["scheme"]
            if scheme not in (SCHEME_C2DSR, SCHEME_RAW):
                raise DataError(f"{source}: unknown item id scheme {scheme!r}")
            raw_x = tuple(str(v) for v in d["raw_x"]) if scheme == SCHEME_RAW else None
            raw_y = tuple(str(v) for v in d["raw_y"]) if scheme == SCHEME_RAW else None
            ids = cls(int(d["n_items_x"]), int(d["n_items_y"]), int(d["max_len"]), raw_x, raw_y,
                      tuple(str(v) for v in d.get("domains", DOMAIN_NAMES)))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"{source}: malformed item id map ({type(exc).__name__}: {exc})") from None
        if raw_x is not None and (len(raw_x) != ids.n_items_x or len(raw_y or ()) != ids.n_items_y):
            raise DataError(f"{source}: raw id lists have {len(raw_x)} / {len(raw_y or ())} entries, "
                            f"expected {ids.n_items_x} / {ids.n_items_y}")
        return ids

    # ---------------------------------------------------------------------- mapping

    def domain(self, name: Any) -> int:
        """"x" / "y" (any case), or a log's domain value -> DOMAIN_X / DOMAIN_Y; DataError otherwise."""
        text = str(name).strip()
        for dom, alias in ((DOMAIN_X, self.domain_names[0]), (DOMAIN_Y, self.domain_names[1])):
            if text.lower() == DOMAIN_NAMES[dom] or text == alias:
                return dom
        names = sorted({*DOMAIN_NAMES, *self.domain_names})
        raise DataError(f"unknown domain {text!r}; expected one of {', '.join(repr(n) for n in names)}")

    @functools.cached_property
    def _lookup(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """(both domains, X only, Y only): raw id text -> internal id (_AMBIGUOUS if in both)."""
        off_y = 1 + self.n_items_x
        x = {raw: 1 + i for i, raw in enumerate(self.raw_x or ())}
        y = {raw: off_y + i for i, raw in enumerate(self.raw_y or ())}
        both = {**x, **y}
        for raw in x.keys() & y.keys():
            both[raw] = _AMBIGUOUS
        return both, x, y

    def lookup(self, token: Any) -> Optional[int]:
        """One raw id -> its internal id, or None when it is no (unambiguous) item of this dataset."""
        if isinstance(token, (bool, np.bool_)) or token is None:
            return None
        if self.raw_x is None:  # C2DSR: an integer global id
            value = _as_int(token)
            if value is None or not 0 <= value < self.n_items_x + self.n_items_y:
                return None
            return value + 1
        both, x, y = self._lookup
        text = _as_text(token)
        found = both.get(text)
        if found is None and ":" in text:  # x:ID / y:ID / <domain value>:ID
            prefix, _, rest = text.partition(":")
            try:
                dom = self.domain(prefix)
            except DataError:
                return None
            found = (x if dom == DOMAIN_X else y).get(rest)
        return None if found is None or found == _AMBIGUOUS else found

    def to_internal(self, tokens: Sequence[Any]) -> tuple[list[int], list[Any]]:
        """Raw ids (oldest first) -> (internal ids of the known ones, in order; the unknown/ambiguous ones)."""
        known, unknown = [], []
        for token in tokens:
            internal = self.lookup(token)
            if internal is None:
                unknown.append(token.item() if isinstance(token, np.generic) else token)
            else:
                known.append(internal)
        return known, unknown

    def to_raw(self, internal: np.ndarray) -> list[Any]:
        """Internal item ids -> raw ids (ints for the C2DSR scheme, strings for logs)."""
        internal = np.asarray(internal, dtype=np.int64)
        if self.raw_x is None:
            return [int(v) - 1 for v in internal.ravel()]
        raw = self._raw_by_internal
        return [raw[int(v) - 1] for v in internal.ravel()]

    @functools.cached_property
    def _raw_by_internal(self) -> tuple[str, ...]:
        """Raw ids of internal ids 1..Nx+Ny (index = internal id - 1)."""
        return (*(self.raw_x or ()), *(self.raw_y or ()))


def _as_int(token: Any) -> Optional[int]:
    if isinstance(token, (int, np.integer)):
        return int(token)
    if isinstance(token, (float, np.floating)):
        return int(token) if float(token).is_integer() else None
    text = str(token).strip()
    return int(text) if text.isdigit() else None


def _as_text(token: Any) -> str:
    """A log's raw id as text: numbers as the CSV would hold them (12, not 12.0)."""
    if isinstance(token, (int, np.integer)):
        return str(int(token))
    if isinstance(token, (float, np.floating)) and float(token).is_integer():
        return str(int(token))
    return str(token).strip()
