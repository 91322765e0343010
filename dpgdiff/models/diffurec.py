"""DiffuRec-style baseline = Table 3's "Diff" (spec §7.2): single-sequence diffusion over s_c, λ-additive x_t injection.

It is DPG-Diff with the Disentangled Encoder, guidance and Tri-CL switched off and
xt_injection = add. model.diffurec_faithful = true also reproduces the reference repo's quirks:
bidirectional attention with the padding-query-row mask, no positional embedding, CE on x̂_0 only
(no MSE term). faithful = false keeps the causal mask + positions and adds λ_diff·L_diff.
"""

from __future__ import annotations

import dataclasses

from dpgdiff.config import Config
from dpgdiff.data.dataset import ItemSpace
from dpgdiff.models.dpgdiff import DPGDiff


def diffurec_config(config: Config) -> Config:
    """The DPG-Diff config that realises the DiffuRec baseline (switches off everything DiffuRec lacks)."""
    m = dataclasses.replace(
        config.model, disentangled_encoder=False, guidance=False, tri_cl=False, xt_injection="add"
    )
    d = dataclasses.replace(config.diffusion, cfg_p=0.0, cfg_w=0.0)
    lo = config.loss
    if config.model.diffurec_faithful:
        lo = dataclasses.replace(lo, lambda_diff=0.0)  # the released code trains CE on x̂_0 only
    return dataclasses.replace(config, model=m, diffusion=d, loss=lo)


class DiffuRec(DPGDiff):
    """DiffuRec-style diffusion recommender in the DPG-Diff harness (same loss/score interface)."""

    def __init__(self, config: Config, items: ItemSpace, max_len: int) -> None:
        faithful = config.model.diffurec_faithful
        super().__init__(
            diffurec_config(config), items, max_len, None,
            attn_mode="diffurec" if faithful else "causal", use_positions=not faithful,
        )
