"""Training: the loop (`loop.py`), checkpoints and model files (`checkpoints.py`), reproducibility (`reproducibility.py`).

    from dpgdiff import train                                   # the function (dpgdiff.training.loop.train)
    result = train(config, dataset, out_dir="runs/x")           # -> TrainResult
    model, config, meta = load_model("runs/x/best.pt", dataset)

The package is named `training` so that the function `dpgdiff.train` and a module never share a name.
"""

from dpgdiff.training.checkpoints import (
    CHECKPOINT_DIRNAME,
    CHECKPOINT_FORMAT,
    MODEL_FORMAT,
    CheckpointError,
    LoopState,
    atomic_torch_save,
    check_dataset,
    load_model,
    load_model_and_data,
)
from dpgdiff.training.loop import (
    RANKS_FILE,
    Reporter,
    TrainingDivergedError,
    TrainResult,
    evaluate_model,
    make_optimizer,
    make_scorer,
    train,
    train_step,
)
from dpgdiff.training.reproducibility import autocast, resolve_device, seed_everything

__all__ = [
    "CHECKPOINT_DIRNAME", "CHECKPOINT_FORMAT", "MODEL_FORMAT", "RANKS_FILE", "CheckpointError", "LoopState", "Reporter",
    "TrainResult", "TrainingDivergedError", "atomic_torch_save", "autocast", "check_dataset", "evaluate_model",
    "load_model", "load_model_and_data", "make_optimizer", "make_scorer", "resolve_device", "seed_everything", "train", "train_step",
]
