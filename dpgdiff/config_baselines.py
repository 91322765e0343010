"""The config sections of the cross-domain baselines C2DSR and ABXI (issue 39): their own knobs only.

What they share with the other models (model.dim, model.n_heads, model.dropout, train.*, ...) stays in the common
sections; MODEL_FIELDS (config_fields.py) says which of those each reads. `Config.validate` checks these sections
through their `ranges()`, so the range checks of every field still run in that one place.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class C2DSRConfig:
    # GNN depth: propagation layers over the item-transition graphs (official --GNN 1). 0 = no graph (an ablation):
    # the sequence encoders read the plain item embeddings.
    gnn_layers: int = 1
    # λ of the final objective (official --lambda 0.7): λ·(prediction losses) + (1 - λ)·(infomax losses).
    # 1 = no infomax (an ablation); the prediction losses are never switched off.
    lambda_pred: float = 0.7

    def ranges(self) -> list[tuple[bool, str, str]]:
        """(ok, dotted field, what is allowed) for Config.validate."""
        return [(self.gnn_layers >= 0, "c2dsr.gnn_layers", ">= 0 (0 = no graph)"),
                (0.0 < self.lambda_pred <= 1.0, "c2dsr.lambda_pred", "0 < lambda <= 1 (1 = no infomax)")]


@dataclass
class ABXIConfig:
    # LoRA ranks (official --rd / --ri, default 8; its demo.sh for Food-Kitchen: 16 and 64). 0 switches that LoRA
    # off: rd = 0 is the official code's ablation "V1: -dLoRA" (its --v 1), ri = 0 its "V3: -iLoRA".
    rd: int = 8
    ri: int = 8
    # The projectors (proj_i, proj_a, proj_b); false is the official code's "V2: -proj".
    proj: bool = True
    # Uniform negatives per domain for each training row (official --n_neg 128: 128 of each domain, so 256 per row);
    # 0 = the full softmax over the target domain's items instead (this harness's other models).
    n_neg: int = 128
    temp: float = 0.75  # temperature of the InfoNCE logits (official --temp)

    def ranges(self) -> list[tuple[bool, str, str]]:
        """(ok, dotted field, what is allowed) for Config.validate."""
        return [(self.rd >= 0, "abxi.rd", ">= 0 (0 = no domain LoRA)"),
                (self.ri >= 0, "abxi.ri", ">= 0 (0 = no invariant LoRA)"),
                (self.n_neg >= 0, "abxi.n_neg", ">= 0 (0 = full softmax)"),
                (self.temp > 0, "abxi.temp", "> 0")]
