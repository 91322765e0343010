"""Models: DPG-Diff and its baselines behind one Recommender interface; `build_model` picks one from the config."""

from __future__ import annotations

from dpgdiff.config import MODEL_LABELS, Config, ConfigError
from dpgdiff.models.abxi import ABXI
from dpgdiff.models.augmentations import item_similarity
from dpgdiff.models.base import Recommender
from dpgdiff.models.c2dsr import C2DSR, build_c2dsr
from dpgdiff.models.diffurec import DiffuRec
from dpgdiff.models.dpgdiff import DPGDiff
from dpgdiff.models.sasrec import SASRec, SASRecSingle

__all__ = [
    "build_model", "Recommender", "DPGDiff", "SASRec", "SASRecSingle", "DiffuRec", "C2DSR", "ABXI", "item_similarity",
]


def build_model(config: Config, dataset, from_checkpoint: bool = False) -> Recommender:
    """config.model.name -> a Recommender for `dataset` (uses dataset.items, .max_len, .train_sequences).

    The positional table covers max(config.model.max_len, dataset.max_len) positions. The ItemCF map
    for the augmentations is computed here (once) only when Tri-CL is on with augment.sim_model=itemcf, as are
    C2DSR's item-transition graphs (from the training sequences only; a checkpoint carries them), and
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
    elif m.name == "c2dsr":
        model = build_c2dsr(config, dataset, max_len, from_checkpoint)
    elif m.name == "abxi":
        model = ABXI(config, dataset.items, max_len)
    else:
        raise ConfigError(f"model.name={m.name!r} is not a known model; expected one of {', '.join(MODEL_LABELS)}")
    if from_checkpoint:
        return model
    if m.item_bias == "popularity":
        model.init_item_bias(dataset.item_counts())
    return model
