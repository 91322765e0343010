"""Optimizer and learning-rate schedule from the config (spec §6).

    optimizer = make_optimizer(config, model)          # Adam / AdamW, betas (0.9, train.adam_beta2)
    schedule = LRSchedule(config, optimizer)            # train.lr_schedule: none | step | plateau
    ... after every epoch:            schedule.epoch_end()
    ... after every validation pass:  schedule.validation_end(val_mrr_sum)
    checkpoint["lr_schedule"] = schedule.state_dict()   # plain types: torch.load(weights_only=True)

step:    lr ·= train.lr_step_gamma every train.lr_step_epochs epochs (DiffuRec: StepLR(100, 0.1), stepped per epoch).
plateau: lr ·= train.lr_plateau_factor after more than train.lr_plateau_patience validation passes
         without a new best validation MRR_X + MRR_Y (ABXI: ReduceLROnPlateau(0.3162, patience 30) on its
         validation metric, evaluated every epoch).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from dpgdiff.config import Config


def make_optimizer(config: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam or AdamW over all parameters with lr, weight_decay and betas (0.9, adam_beta2) from config.train."""
    t = config.train
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    # fused: one kernel per parameter instead of ~10 element-wise ops (same update rule; issue 9).
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in model.parameters())
    return cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, betas=(0.9, t.adam_beta2), fused=fused)


class LRSchedule:
    """train.lr_schedule around a torch scheduler, driven by epoch ends and validation scores."""

    def __init__(self, config: Config, optimizer: torch.optim.Optimizer) -> None:
        t = config.train
        self.kind = t.lr_schedule
        self.scheduler: Optional[Any] = None
        if self.kind == "step":
            self.scheduler = torch.optim.lr_scheduler.StepLR(optimizer, t.lr_step_epochs, t.lr_step_gamma)
        elif self.kind == "plateau":
            # mode max: the validation score is MRR_X + MRR_Y (spec §5.4); threshold 0: any gain counts.
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=t.lr_plateau_factor, patience=t.lr_plateau_patience, threshold=0.0
            )
        elif self.kind != "none":
            raise ValueError(f"unknown train.lr_schedule {self.kind!r}; expected none, step or plateau")
        self.optimizer = optimizer

    def epoch_end(self) -> None:
        """Call once after every training epoch."""
        if self.kind == "step":
            self.scheduler.step()

    def validation_end(self, score: float) -> None:
        """Call once after every validation pass with the selection score (higher is better)."""
        if self.kind == "plateau":
            self.scheduler.step(score)

    @property
    def lr(self) -> float:
        """The current learning rate (of the first parameter group)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load_state_dict(self, state: Optional[dict[str, Any]]) -> None:
        """Restore a `state_dict`; None (a checkpoint written before schedules existed) is only valid for none."""
        if state is None:
            if self.kind != "none":
                raise ValueError(f"the checkpoint has no lr schedule state, but train.lr_schedule={self.kind!r}")
            return
        if state["kind"] != self.kind:
            raise ValueError(f"the checkpoint's lr schedule is {state['kind']!r}, not train.lr_schedule={self.kind!r}")
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
