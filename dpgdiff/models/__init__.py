"""Models: DPG-Diff and its baselines behind one Recommender interface; `build_model` picks one from the config."""

from __future__ import annotations

from dpgdiff.config import Config, ConfigError
from dpgdiff.models.augmentations import item_similarity
from dpgdiff.models.base import Recommender
from dpgdiff.models.diffurec import DiffuRec
from dpgdiff.models.dpgdiff import DPGDiff
from dpgdiff.models.sasrec import SASRec, SASRecSingle

__all__ = [
    "build_model", "Recommender", "DPGDiff", "SASRec", "SASRecSingle", "DiffuRec", "item_similarity",
]


def build_model(config: Config, dataset, from_checkpoint: bool = False) -> Recommender:
    """config.model.name -> a Recommender for `dataset` (uses dataset.items, .max_len, .train_sequences).

    The positional table covers max(config.model.max_len, dataset.max_len) positions. The ItemCF map
    for the augmentations is computed here (once) only when Tri-CL is on with augment.sim_model=itemcf, and
    model.item_bias=popularity sets the bias from dataset.item_counts() here. from_checkpoint=True (load_model):
    the saved weights replace the bias next, so the counts are not read, and a dataset without them (the
    id-map shell that `Recommender.load` serves from) builds the model."""
    m = config.model
    max_len = max(int(m.max_len), int(dataset.max_len))
    if m.name == "sasrec":
        model = SASRec(config, dataset.items, max_len)
    elif m.name == "sasrec_single":
        model = SASRecSingle(config, dataset.items, max_len)
    elif m.name == "diffurec":
        model = DiffuRec(config, dataset.items, max_len)
    elif m.name == "dpgdiff":
        similar = None
        if m.tri_cl and config.augment.sim_model == "itemcf":
            similar = item_similarity(dataset.train_sequences, dataset.items, seed=config.train.seed)
        model = DPGDiff(config, dataset.items, max_len, similar)
    else:
        raise ConfigError(
            f"model.name={m.name!r} is not a known model; expected dpgdiff, sasrec, sasrec_single or diffurec"
        )
    if from_checkpoint:
        return model
    if m.item_bias == "popularity":
        model.init_item_bias(dataset.item_counts())
    return model
