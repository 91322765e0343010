"""The space a search uses without --space, and the sizes a dataset-agnostic space takes from the dataset card.

`default_space` picks a named dataset's own space (search_spaces/<name>-cpu.yaml without a GPU, else <name>.yaml)
or the dataset-agnostic default-cpu.yaml / default-gpu.yaml, and says why; `card_sizing` gives the fixed values
that fit a dataset-agnostic space to the data (tune/settings.py's `sized_from_card` adds them to the search).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from dpgdiff.config import read_yaml
from tune.space import SpaceError

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
DEFAULT_SPACES = {"cpu": "default-cpu.yaml", "gpu": "default-gpu.yaml"}  # dataset-agnostic, sized from the card
# Examples per epoch above which a dataset-agnostic space trains on `last` examples (one per training sequence)
# instead of `prefix` (one per position): on CPU, Food-Kitchen's 93,091 prefix examples take 1.5-2 minutes per
# epoch at d=64 on 2 cores (search_spaces/food_kitchen-cpu.yaml), so 150,000 keeps a CPU epoch to a few minutes.
PREFIX_EXAMPLES_BUDGET = {"cpu": 150_000, "gpu": 5_000_000}
MAX_NEGATIVES = 999  # eval.n_negatives' default (the paper's protocol): lowered only for small item sets


@dataclass(frozen=True)
class SpaceChoice:
    """The space a search uses when no --space is given, and why (the search prints `reason`)."""

    path: Path
    reason: str
    from_card: bool  # a dataset-agnostic default: the search sizes it from the dataset card (`card_sizing`)


def space_hardware(path: Path) -> str:
    """The `hardware:` of a space file ("cpu" when it has none)."""
    data, _ = read_yaml(path, "search space", SpaceError)
    return str(data.get("hardware", "cpu")) if isinstance(data, dict) else "cpu"


def default_space(dataset: str, gpu: bool, root: Optional[Path] = None) -> SpaceChoice:
    """The space for `dataset` without --space: its own (search_spaces/<name>-cpu.yaml without a GPU, else
    <name>.yaml) when it is a named dataset with one, else the dataset-agnostic default-cpu.yaml /
    default-gpu.yaml. Without a GPU, never a space whose `hardware:` is gpu. Interaction logs and C2DSR folders
    (any path) always get the dataset-agnostic space: their file names say nothing about their size."""
    root = root or SPACES_DIR
    kind = "gpu" if gpu else "cpu"
    fallback = root / DEFAULT_SPACES[kind]
    if str(dataset).lower().endswith((".csv", ".parquet")) or Path(dataset).is_dir() or "/" in str(dataset):
        return SpaceChoice(fallback, f"{dataset} is a file or folder, not a named dataset: the dataset-agnostic "
                                     f"{kind.upper()} space, sized from its dataset card", True)
    stem = str(dataset).lower().replace("-", "_")
    own = [root / f"{stem}.yaml"] if gpu else [root / f"{stem}-cpu.yaml", root / f"{stem}.yaml"]
    for path in own:
        if not path.exists():
            continue
        if not gpu and space_hardware(path) == "gpu":
            return SpaceChoice(fallback, f"no GPU (--gpus-per-trial 0) and {path.name} is GPU-sized: the "
                                         "dataset-agnostic CPU space, sized from the dataset card", True)
        why = "no GPU (--gpus-per-trial 0): the dataset's CPU-sized space" if path.name.endswith("-cpu.yaml") \
            else "the dataset's own space"
        if not gpu and (root / f"{stem}.yaml").exists() and path.name.endswith("-cpu.yaml"):
            why += f" (--space search_spaces/{stem}.yaml for the GPU-sized one)"
        return SpaceChoice(path, why, False)
    return SpaceChoice(fallback, f"no space file for dataset {dataset!r}: the dataset-agnostic {kind.upper()} "
                                 "space, sized from the dataset card", True)


def card_sizing(card: Any, gpu: bool) -> dict[str, tuple[Any, str]]:
    """Fixed values that fit a dataset-agnostic space to a dataset -> {dotted field: (value, why)}.

    card: dpgdiff.data.DatasetCard (items per domain, training examples per epoch, max_len).
    - train.mode: `prefix` (one example per position, spec §1.4) while its examples per epoch fit
      PREFIX_EXAMPLES_BUDGET, else `last` (one per training sequence);
    - eval.n_negatives: 999 (the paper's protocol) unless a domain has too few items for that many distinct
      negatives next to the positive and a full history (then items - 1 - max_len)."""
    kind = "gpu" if gpu else "cpu"
    out: dict[str, tuple[Any, str]] = {}
    budget = PREFIX_EXAMPLES_BUDGET[kind]
    if card.train_examples_prefix <= budget:
        out["train.mode"] = ("prefix", f"{card.train_examples_prefix:,} prefix examples per epoch <= {budget:,} "
                                       f"on {kind.upper()}")
    else:
        out["train.mode"] = ("last", f"{card.train_examples_prefix:,} prefix examples per epoch > {budget:,} on "
                                     f"{kind.upper()}; last: {card.train_examples_last:,}")
    room = min(card.items_x, card.items_y) - 1 - card.max_len
    if room < MAX_NEGATIVES:
        out["eval.n_negatives"] = (max(1, room), f"the smaller domain has {min(card.items_x, card.items_y):,} "
                                                 f"items: fewer than {MAX_NEGATIVES} + positive + a history of "
                                                 f"{card.max_len}")
    return out
