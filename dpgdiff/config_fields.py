"""Which config fields each model reads, which another field's value switches off, and which were retired.

The tables that `dpgdiff.config.Config` consults (issue 37): MODEL_FIELDS (a file or --set that sets a field its
model never reads is refused), INERT_WHEN (fields `to_yaml` leaves out under the config's values), RETIRED and
RETIRED_VALUES (levers tried and not kept: refused by name, dropped from what earlier versions saved).
A new model adds its entry to MODEL_FIELDS.
"""

from __future__ import annotations

from typing import Any, Callable

# What tables call each model; `Config.label()` adds the DPG-Diff components that are switched off.
MODEL_LABELS = {"dpgdiff": "DPG-Diff", "sasrec": "SASRec", "sasrec_single": "SASRec-single", "diffurec": "DiffuRec",
                "c2dsr": "C2DSR", "abxi": "ABXI"}
# Table 3's switches (and issue 23's control), in the order a label lists them.
COMPONENT_SWITCHES = (("model.diffusion", "−Diffusion"), ("model.disentangled_encoder", "−DE"),
                      ("model.guidance", "−G"), ("model.tri_cl", "−Tri-CL"))

# A model declares the fields it reads ("section.*": the whole section). A config file or --set that sets any other
# field is refused; `to_yaml` writes only these, less the ones INERT_WHEN makes inert.
_TRAINING = ("train.*", "eval.*")
_BACKBONE = ("model.name", "model.dim", "model.max_len", "model.n_heads", "model.n_c_layers", "model.dropout",
             "model.emb_dropout", "model.logit_scale", "model.item_init_std", "model.item_bias")
_SASREC = (*_BACKBONE, "model.position", "loss.domain_loss_norm", "loss.ce_impl", "loss.ce_chunk_rows", *_TRAINING)
MODEL_FIELDS: dict[str, tuple[str, ...]] = {
    "dpgdiff": ("model.*", "diffusion.*", "loss.*", "augment.*", *_TRAINING),
    "sasrec": _SASREC,
    "sasrec_single": _SASREC,
    # DiffuRec: no positions, its own full-softmax CE over the joint table (no loss section), no augmentations.
    "diffurec": (*_BACKBONE, "model.lambda_u", "model.lambda_infer", "diffusion.steps", "diffusion.schedule",
                 "diffusion.beta_scale", "diffusion.terminal_snr", "diffusion.sampler", "diffusion.infer_steps",
                 "diffusion.ddpm_variance", "diffusion.val_sampler", "diffusion.val_infer_steps", *_TRAINING),
    # C2DSR (dpgdiff/models/c2dsr.py): SASRec's backbone fields less logit_scale (its output layers are linear
    # maps with a bias, not the item tables), its CE, and its own section. Positions are always absolute.
    "c2dsr": (*(f for f in _BACKBONE if f != "model.logit_scale"), "c2dsr.*", "loss.domain_loss_norm",
              "loss.ce_impl", "loss.ce_chunk_rows", *_TRAINING),
    # ABXI (dpgdiff/models/abxi.py): one shared attention layer, one dropout rate, its own init and loss.
    "abxi": ("model.name", "model.dim", "model.max_len", "model.n_heads", "model.dropout", "model.item_bias",
             "abxi.*", *_TRAINING),
}

_ENCODER = ("model.guidance", "model.guidance_memory", "model.fusion", "model.pool", "model.n_enc_layers",
            "model.score_alpha", "loss.lambda_s", "loss.single_loss_repr", "diffusion.cfg_p", "diffusion.cfg_w")
# PreferDiff's preference loss (loss.lambda_prefer): its γ and λ do nothing while it is off.
_PREFER = ("loss.lambda_prefer", "loss.prefer_gamma", "loss.prefer_lambda")
# The −Diffusion control keeps the output head (diffusion.precond, sigma_data and the x0_norm that sets σ_d).
_CHAIN = ("diffusion.steps", "diffusion.schedule", "diffusion.beta_scale", "diffusion.terminal_snr",
          "diffusion.sampler", "diffusion.infer_steps", "diffusion.ddpm_variance", "diffusion.val_sampler",
          "diffusion.val_infer_steps", "loss.lambda_diff", "loss.rec_timestep", *_PREFER)
_CONTRASTIVE = ("augment.*", "loss.cl_sim", "loss.cl_tau", "loss.cl_aug_view")
# (fields, when they do nothing): declared fields that another field's value switches off.
INERT_WHEN: tuple[tuple[tuple[str, ...], Callable[[Any], bool]], ...] = (
    (_ENCODER, lambda c: c.model.name == "dpgdiff" and not c.model.disentangled_encoder),
    (("model.guidance_memory",), lambda c: not c.model.guidance),
    (_CHAIN, lambda c: c.model.name == "dpgdiff" and not c.model.diffusion),  # the −Diffusion control
    (("model.lambda_u", "model.lambda_infer"), lambda c: c.model.name == "dpgdiff" and c.model.xt_injection != "add"),
    (("diffusion.sigma_data",), lambda c: c.diffusion.precond != "edm"),
    # DDPM's variance only: not read when neither the test nor the validation chain is DDPM
    (("diffusion.ddpm_variance",), lambda c: "ddpm" not in (c.diffusion.sampler, c.diffusion.val_sampler)),
    (("loss.lambda_cl",), lambda c: not c.model.tri_cl),
    (_CONTRASTIVE, lambda c: not c.model.tri_cl or c.loss.lambda_cl == 0),
    (("loss.ce_chunk_rows",), lambda c: c.loss.ce_impl != "chunked"),
    (_PREFER[1:], lambda c: c.loss.lambda_prefer == 0),
    (("train.freeze_items_epochs",), lambda c: c.train.init_from is None),  # it freezes what init_from copied
    (("train.lr_step_epochs", "train.lr_step_gamma"), lambda c: c.train.lr_schedule != "step"),
    (("train.lr_plateau_factor", "train.lr_plateau_patience"), lambda c: c.train.lr_schedule != "plateau"),
    (("eval.noise_seed",), lambda c: c.eval.noise_rate == 0),
)

# Levers tried and not kept (issue 37; the journal's verdict table says what each did and what it measured), with
# the value that reproduces today's behaviour. RETIRED_AT has the code of every one; `train=True` marks those that
# only shaped training, so a checkpoint trained with another value still loads and scores as it did.
RETIRED_AT = "f7ceea8"
RETIRED: dict[str, tuple[Any, bool]] = {
    "model.query_init": ("noise", False),
    "model.diffurec_variant": ("faithful", False),  # "harness" checkpoints load as DPG-Diff with its switches off
    "diffusion.n_samples": (1, False),
    "diffusion.start": ("noise", False),
    "diffusion.start_step": (None, False),
    "diffusion.self_cond": (False, False),
    "diffusion.target_detach": (False, True),
    "loss.lambda_diff_rank": (0.0, True),
    "loss.diff_reduction": ("mean", True),
    "loss.lambda_mix": (0.0, True),
    "loss.ce_negatives": (1024, True),
    "loss.ce_negative_source": ("uniform", True),
    "loss.ce_popularity_alpha": (0.75, True),
}
# Retired values of kept fields, both training-only, with the value a saved config loads as (scoring is the same).
RETIRED_VALUES: dict[tuple[str, Any], Any] = {
    ("loss.rec_timestep", "rollout"): "terminal",  # a trained second reverse step for half the rows
    ("loss.ce_impl", "sampled"): "full",  # the sampled softmax of issue 26, with loss.ce_negatives
}


def model_reads(name: str, dotted: str) -> bool:
    """Whether model `name` reads field `dotted` under some values of the other fields (MODEL_FIELDS)."""
    return matches(dotted, MODEL_FIELDS[name])


def matches(dotted: str, names) -> bool:
    """`dotted` is in `names`, itself or as its section's "section.*"."""
    return dotted in names or f"{dotted.split('.')[0]}.*" in names
