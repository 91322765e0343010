"""Does an option that is off leave training exactly as it was? A digest of the weights after a few steps, per tree.

    (cd /path/to/other/checkout && PYTHONPATH=$PWD python $OLDPWD/bench/weights_digest.py)   # the code before
    PYTHONPATH=$PWD python bench/weights_digest.py                                          # the working tree

Builds DPG-Diff at d = 16 on the synthetic set (400 users, 1,200 items per domain, seed 7; generated into
--data-dir) in three configurations (the defaults; EDM with the CE on the terminal pass; the −Diffusion control),
takes --steps optimizer steps of 128 prefix examples each with seeded generators, and prints each configuration's
last loss components and one SHA-256 over every weight of all three. The same digest from two trees: the same
training, bit for bit (on the same machine and torch build; one thread).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile

import dpgdiff  # noqa: F401  (before torch: the MKL fix for AMD CPUs, dpgdiff/mkl_amd.py)
import torch

from dpgdiff.config import Config
from dpgdiff.data import load_dataset
from dpgdiff.models import build_model
from dpgdiff.optim import make_optimizer
from dpgdiff.training.loop import train_step

CONFIGS = ({}, {"diffusion.precond": "edm", "loss.rec_timestep": "terminal"}, {"model.diffusion": False})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--data-dir", default=None, help="where the synthetic set is generated (default: a temp folder)")
    args = p.parse_args()
    torch.set_num_threads(1)
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="dpgdiff-digest-")
    dataset = load_dataset("synthetic", data_dir=data_dir, n_users=400, n_items_x=1200, n_items_y=1200, seed=7)
    ex = dataset.training_examples("prefix")
    history, target = torch.as_tensor(ex.history), torch.as_tensor(ex.target)
    domain = torch.as_tensor(ex.target_domain).long()
    digest = hashlib.sha256()
    for overrides in CONFIGS:
        config = Config().with_overrides({"model.dim": 16, "model.n_c_layers": 1, **overrides})
        torch.manual_seed(0)
        model = build_model(config, dataset)
        optimizer = make_optimizer(config, model)
        generator = torch.Generator().manual_seed(0)
        for i in range(args.steps):
            rows = torch.arange(i * 128, (i + 1) * 128)
            values = train_step(model, optimizer, history[rows], target[rows], domain[rows], config, generator)
        for tensor in model.state_dict().values():
            digest.update(tensor.detach().numpy().tobytes())
        print(overrides or "defaults", {k: round(v, 6) for k, v in values.items()})
    print(f"dpgdiff from {dpgdiff.__file__}")
    print(f"sha256 of the weights: {digest.hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
