"""One typed configuration for model, diffusion, losses, augmentation, training and evaluation.

Every knob of the project lives here, with its default and its allowed values; `Config.validate`
is the one place that checks them. Defaults follow ../shared/design/model-spec.md §6 except where
a comment says why not (mainly `model.dim`, kept CPU-sized; `configs/paper.yaml` has the paper's).

    cfg = Config.from_yaml("cfg.yaml").with_overrides(["model.dim=64", "train.epochs=2"])
    cfg.to_yaml("resolved.yaml")

Each model reads only its own fields (MODEL_FIELDS): a file or --set that sets a field the chosen model never
reads is refused, naming both, and `to_yaml` writes exactly what the model reads under the config's values (a
field switched off by another, INERT_WHEN, is left out). What earlier versions saved (checkpoints, a search's
state) listed every field and still loads (`Config.from_saved`). Levers tried and not kept are RETIRED.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from dpgdiff.config_fields import (  # noqa: F401  (MODEL_FIELDS, MODEL_LABELS, model_reads re-exported)
    COMPONENT_SWITCHES, INERT_WHEN, MODEL_FIELDS, MODEL_LABELS, RETIRED, RETIRED_AT, RETIRED_VALUES, matches,
    model_reads,
)
from dpgdiff.config_baselines import ABXIConfig, C2DSRConfig
from dpgdiff.files import atomic_write_text, parse_yaml, read_yaml  # noqa: F401  (read_yaml, parse_yaml re-exported)


# With diffusion.terminal_snr=as_is, a schedule must bring x_T this close to pure noise (issue 8 §2).
MAX_TERMINAL_ALPHA_BAR = 0.05


class ConfigError(ValueError):
    """A config field is unknown, mistyped or out of range; the message names the field."""


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    # Which model the harness trains: DPG-Diff, or one of the baselines in the same harness (MODEL_FIELDS says
    # which fields each reads). sasrec_single: spec §7.1's per-domain SASRec of Table 1 (one tower per domain,
    # reads s_{d*} only); diffurec: WHUIR/DiffuRec (spec §7.2; Table 3's "Diff" is DPG-Diff with its switches off);
    # c2dsr, abxi: the cross-domain baselines of Table 1 (issue 39; their own sections `c2dsr` and `abxi`,
    # dpgdiff/config_baselines.py).
    name: Literal["dpgdiff", "sasrec", "sasrec_single", "diffurec", "c2dsr", "abxi"] = "dpgdiff"
    # Embedding = hidden size. Paper: 512; 128 keeps CPU runs practical (spec §8).
    dim: int = 128
    # Sizes the positional table only: build_model uses max(max_len, dataset.max_len) positions. The history
    # window itself is the dataset's (C2DSR's maxlen 15 for both Amazon pairs), not this field.
    max_len: int = 15
    n_heads: int = 2
    n_enc_layers: int = 1  # Encoder_x / Encoder_y blocks (paper: "a self-attention layer")
    n_c_layers: int = 2  # Encoder_c blocks (shared, domain-invariant)
    n_dec_layers: int = 1  # decoder cross-attention blocks
    dropout: float = 0.2
    emb_dropout: float = 0.2
    position: Literal["recency", "absolute"] = "recency"  # spec §1.3
    pool: Literal["last", "mean"] = "last"  # spec §2.2
    fusion: Literal["concat", "gate", "sum"] = "concat"  # spec §2.3
    guidance_memory: Literal["tokens3", "seq", "single"] = "tokens3"  # spec §3.5
    xt_injection: Literal["concat_token", "add"] = "concat_token"  # spec §3.5
    lambda_u: float = 0.001  # xt_injection=add and DiffuRec only (DiffuRec's lambda_uncertainty)
    # λ ~ N(λ_u, λ_u) of the additive x_t injection (xt_injection=add and DiffuRec) at inference:
    # sample = drawn at every reverse step as in training (DiffuRec `Diffu_xstart.forward` draws it
    # on every call); mean = fixed λ_u at inference (the harness's former behaviour).
    lambda_infer: Literal["sample", "mean"] = "sample"
    logit_scale: Literal["one", "inv_sqrt_d"] = "one"  # spec §2.1
    x0_norm: Literal["none", "l2_sqrt_d"] = "none"  # spec §2.1
    # Std of the N(0, std²) init of E_x, E_y, the MASK vector and Pos. Spec §2.1 suggests 1.0
    # (unit-variance x_0 for DDPM), but with Adam the relative step is ~lr/std, and on the synthetic
    # set 1.0 left DPG-Diff at popularity level after 5 epochs where 0.1 reached 4.5x popularity
    # (README, "Item initialisation"). x0_norm=l2_sqrt_d restores unit-scale x_0 if wanted.
    item_init_std: float = 0.1
    score_alpha: float = 1.0  # weight of g_{d*} in the Eq. 15 score (spec §5.1)
    # A learned per-item bias b_j added to every item logit, s·h·E^T + b, in training and scoring (every
    # model alike; not in the paper). On sparse data, where most items are seen once or twice, their
    # embeddings stay near their init and b carries the popularity prior that the dot product cannot.
    # none: no bias ("off" would read as YAML false); zero: b starts at 0; popularity: b starts at
    # log(1 + training count), centred per domain, so that the untrained model already ranks by popularity
    # and training learns the rest
    # (from zero, Adam moves b by about lr per step: far too slowly to reach log-popularity in 3 epochs).
    item_bias: Literal["none", "zero", "popularity"] = "none"
    # Where Eq. 15's softmax goes (DPG-Diff scoring only, spec §5.1 / A4): items = over the item scores
    # (monotone, so raw scores rank); literal = softmax over the d-dim vector x̂_0 + α·ĝ before the
    # dot product with E_{d*}, as Eq. 15 is printed (changes the ranking; kept for the ablation).
    score_softmax: Literal["items", "literal"] = "items"
    # Ablation switches reproducing Table 3 (spec §7.3). A disabled component is not built.
    disentangled_encoder: bool = True  # DE: Encoder_x / Encoder_y and the fused guidance g_d
    # G: full guidance memory [g_d, g_x, g_y] instead of [g_d]. false is the same model as guidance_memory=single
    # (Table 3's switch, kept under the paper's name); guidance_memory is then not read.
    guidance: bool = True
    tri_cl: bool = True  # Tri-CL: the tri-view contrastive loss
    # The `−Diffusion` control (issue 23): the same network without the diffusion. false: the denoiser's query
    # token is e_dom[d*] alone (x_t ≡ 0 and no timestep embedding: the TimestepEmbedding is not built), one
    # forward pass scores (the diffusion section is unused), and L_diff is not computed. DPG-Diff only.
    diffusion: bool = True
    # Two target-domain embeddings, on purpose: DisentangledEncoder.dom_emb conditions the fused guidance g_d
    # (spec §2.3); DPGDenoiser.dom_emb conditions the x_t token (spec §3.5; with diffusion=false it is the query).


@dataclass
class DiffusionConfig:
    steps: int = 32  # T (DiffuRec default)
    schedule: Literal["trunc_lin", "linear", "cosine", "sqrt", "trunc_cos", "exp"] = "trunc_lin"
    beta_scale: float = 1.0  # multiplies beta, clipped to <= 0.999
    # Zero terminal SNR (Lin et al. 2024): every schedule is rescaled so that ᾱ_T = 0 exactly, so x_T is pure noise
    # in training as it is at test time (x_T ~ N(0, I)). "as_is" keeps the named schedule, which must then end at
    # ᾱ_T <= 0.05 (checked below): trunc_lin with T <= 20, or beta_scale < 1, would not (issue 8 §2).
    terminal_snr: Literal["zero", "as_is"] = "zero"
    # For the final test evaluation. With K = 1 reverse step (infer_steps=1) the chain is one denoiser call whose
    # x̂_0 is returned as is: sampler and ddpm_variance are then inert.
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    infer_steps: Optional[int] = None  # K reverse steps at test; None = T
    # DDPM reverse variance: the posterior variance of the (respaced) chain, which keeps every marginal equal to
    # q(x_t | x_0) for an exact x̂_0; "fixed_large" is DiffuRec's β'_t, too wide when K < T (issue 8 §5).
    ddpm_variance: Literal["posterior", "fixed_large"] = "posterior"
    # Validation during training. None = the test procedure (sampler, infer_steps), so that the checkpoint is
    # selected by the procedure the test reports; a cheaper one (e.g. ddim, 4) can be set explicitly.
    val_sampler: Optional[Literal["ddpm", "ddim"]] = None
    val_infer_steps: Optional[int] = None
    # Preconditioning of the denoiser (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
    # Generative Models", Table 1), written for this VP process: x̂_0 = c_skip·x_t + c_out·F(c_in·x_t, t) with
    # v_t = ᾱ_t·σ_d² + 1 - ᾱ_t, c_in = 1/sqrt(v_t), c_skip = sqrt(ᾱ_t)·σ_d²/v_t, c_out = σ_d·sqrt(1 - ᾱ_t)/sqrt(v_t),
    # and L_diff weighted by 1/c_out² (so the network's target has unit variance at every t); F gets a linear
    # output layer after the decoder's LayerNorm (free in scale, as EDM's F is). none = the paper:
    # x̂_0 = F(x_t, t), a LayerNorm output of norm ≈ sqrt(d) whatever the scale of x_0 (issue 23 §1).
    precond: Literal["none", "edm"] = "none"
    # σ_d of precond=edm: null = the RMS of the target domain's item table as diffused (1 with
    # model.x0_norm=l2_sqrt_d), recomputed at every step without gradient; a number fixes it.
    sigma_data: Optional[float] = None
    cfg_p: float = 0.0  # classifier-free guidance: p(drop memory) in training
    cfg_w: float = 0.0  # classifier-free guidance weight at inference

    def val_procedure(self) -> tuple[str, Optional[int]]:
        """(sampler, infer_steps) used on the validation cases; infer_steps None = T."""
        return self.val_sampler or self.sampler, self.val_infer_steps or self.infer_steps


@dataclass
class LossConfig:
    lambda_diff: float = 1.0  # Eq. 14
    # Weight of the CE terms (Eq. 14). The reference scale: every search keeps it at 1 (the other λ are relative
    # to it); 0 drops every CE term (L_diff and L_cl alone), an ablation, not a tuning knob.
    lambda_rec: float = 1.0
    lambda_s: float = 1.0  # single-domain term L^s relative to L^c (Eq. 10)
    # Which x̂_0 the CE terms (Eq. 10-12) and L_cl's x̂_0 view read. sampled (Alg. 1, as DiffuRec): the x̂_0 that
    # L_diff reads, denoised from x_t at t ~ U{0..T-1}. At small t, x_t still carries the target (the committed
    # scale has SNR ≈ 1.5 at t = 0; `diagnose`: MRR(x̂_0) 0.48 at t = 0, 0.01 from t ≈ 8), so part of the CE is
    # learnt by copying x_t, which a test-time chain started from pure noise never has. terminal: the CE reads a
    # second denoiser pass from pure noise at t = T-1, the input of a K = 1 reverse chain, so the ranking loss
    # trains what inference scores; L_diff keeps the sampled t (one pass only when lambda_diff = 0). Issue 23.
    rec_timestep: Literal["sampled", "terminal"] = "sampled"
    lambda_cl: float = 1.0
    cl_sim: Literal["cos", "dot"] = "cos"  # Eq. 13; "dot" with tau=1 is the paper-literal form
    cl_tau: float = 0.2
    cl_aug_view: Literal["history_only", "with_xt", "denoiser"] = "history_only"
    single_loss_repr: Literal["domain", "fused"] = "domain"
    domain_loss_norm: Literal["per_domain_mean", "global_mean"] = "per_domain_mean"
    # full: full softmax; chunked: the same loss and gradients holding at most ce_chunk_rows rows of
    # logits at a time (recomputed in the backward pass: less memory, one more matmul).
    ce_impl: Literal["full", "chunked"] = "full"
    ce_chunk_rows: int = 256  # rows of logits per chunk for ce_impl=chunked
    # PreferDiff's preference loss (Liu et al., "Preference Diffusion for Recommendation", ICLR 2025,
    # arXiv 2410.13117), one more term of Eq. 14: λ_prefer·[−(1−λ)·log σ(−γ·(err⁺ − err⁻)) + λ·err⁺]. err is the
    # cosine error (1 − cos(x̂_0, x_0))²; err⁺ that of the positive's own sampled-t pass (the one L_diff reads),
    # err⁻ that of the centroid of the row's in-batch negatives (the other rows' targets in the same domain, other
    # items), noised at the same t and denoised from the same history. Unlike a ranking loss on x̂_0, every t is
    # trained to tell the target from the negatives at its own noise level (models/losses.py: preference_loss).
    # 0 = off (nothing computed); the −Diffusion control has no x_t and does not read it.
    lambda_prefer: float = 0.0
    prefer_gamma: float = 1.0  # γ: the preference margin's scale inside the sigmoid
    prefer_lambda: float = 0.5  # λ in [0, 1]: the generative share (cosine err⁺) against the preference share


@dataclass
class AugmentConfig:
    crop_eta: float = 0.6
    mask_gamma: float = 0.3
    reorder_beta: float = 0.2
    substitute_rho: float = 0.1
    insert_rho: float = 0.3
    sim_model: Literal["itemcf", "random"] = "itemcf"


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: Literal["adam", "adamw"] = "adam"
    # Adam(W) β2 (β1 = 0.9). Spec §6: C2DSR and SASRec use 0.98; 0.999 is PyTorch's and DiffuRec's default.
    adam_beta2: float = 0.999
    # Learning-rate schedule (spec §6; dpgdiff/optim.py): none; step = ·lr_step_gamma every
    # lr_step_epochs epochs (DiffuRec StepLR(100, 0.1)); plateau = ·lr_plateau_factor after more than
    # lr_plateau_patience validation passes without a new best val MRR sum (ABXI ReduceLROnPlateau).
    lr_schedule: Literal["none", "step", "plateau"] = "none"
    lr_step_epochs: int = 100
    lr_step_gamma: float = 0.1
    lr_plateau_factor: float = 0.3162  # ABXI: 10^-0.5
    lr_plateau_patience: int = 2  # in validation passes; below train.patience so a decay comes before a stop
    grad_clip: Optional[float] = None
    mode: Literal["prefix", "last"] = "prefix"  # spec §1.4
    eval_every: int = 1  # epochs between validation passes
    patience: int = 5  # validation passes without improvement before stopping; 0 = never stop
    seed: int = 2040
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["fp32", "bf16"] = "fp32"
    num_threads: Optional[int] = None  # torch intra-op threads; None = torch default
    # Embedding pretraining (issue 23 §5; ADRec, KDD 2025): before the first step, copy the item tables (and the
    # item bias and positional table where present) and the transformer blocks whose shapes match from a trained
    # checkpoint (best.pt, e.g. SASRec's on the same data) into the new model; the copied tensors are logged.
    # null = none. Ignored when a run resumes (the checkpoint has the weights).
    init_from: Optional[str] = None
    # ADRec's staged training (Chen, Xu & Jiang, KDD 2025, arXiv 2505.19544; README, "Issue 40's two options"): with
    # train.init_from, the item tables (E_x, E_y and model.item_bias's b_x, b_y) stay frozen for the first
    # freeze_items_epochs epochs, while everything else aligns to them (ADRec's stage 2), then all train (stage 3).
    # 0 = never frozen. A frozen table gets no gradient and no optimizer state until it thaws.
    freeze_items_epochs: int = 0


@dataclass
class EvalConfig:
    n_negatives: int = 999
    candidate_seed: int = 2040
    ties: Literal["avg", "pess"] = "avg"
    full_ranking: bool = True
    batch_size: int = 1024
    noise_rate: float = 0.0  # RQ3: random same-domain inserts/substitutions in test histories
    noise_seed: int = 0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    c2dsr: C2DSRConfig = field(default_factory=C2DSRConfig)
    abxi: ABXIConfig = field(default_factory=ABXIConfig)

    # ---------------------------------------------------------------- (de)serialisation

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every field, read or not (checkpoints and the search's own state); `to_yaml` writes `fields_read()`."""
        return dataclasses.asdict(self)

    def fields_read(self) -> list[str]:
        """Dotted names of the fields this config's model reads under its values (MODEL_FIELDS less INERT_WHEN)."""
        inert = {name for names, when in INERT_WHEN if when(self) for name in names}
        return [name for name in self.field_names() if self.declares(name) and not matches(name, inert)]

    def label(self) -> str:
        """What tables call this configuration: the model, and for DPG-Diff the components switched off, e.g.
        "DPG-Diff (−DE)", or "DPG-Diff (full)" with all of them ("−G" is not listed where "−DE" already removes it)."""
        name = MODEL_LABELS[self.model.name]
        if self.model.name != "dpgdiff":
            return name
        off = [tag for dotted, tag in COMPONENT_SWITCHES if not _get(self, dotted)
               and not (tag == "−G" and not self.model.disentangled_encoder)]
        return f"{name} ({', '.join(off) if off else 'full'})"

    def to_file_dict(self) -> dict[str, dict[str, Any]]:
        """`to_dict` restricted to `fields_read()`: what a config file for this model lists."""
        data: dict[str, dict[str, Any]] = {}
        for dotted in self.fields_read():
            section, key = dotted.split(".")
            data.setdefault(section, {})[key] = getattr(getattr(self, section), key)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, source: str = "config", saved: bool = False) -> "Config":
        """Build and validate a config from nested dicts; unknown keys are errors.

        A field the chosen model never reads (MODEL_FIELDS) is refused, naming the field and the model. saved=True
        is for what an earlier version wrote (checkpoints, a search's state, its runs' config.yaml): those list
        every field, so the unread ones are dropped, as are retired fields that only shaped training (RETIRED)."""
        data = data or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
        sections = {f.name: f.default_factory() for f in dataclasses.fields(cls)}  # type: ignore[misc]
        for section_name, values in data.items():
            if section_name not in sections:
                raise ConfigError(
                    f"{source}: unknown section {section_name!r}; expected one of {sorted(sections)}"
                )
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: section {section_name!r} must be a mapping")
            for key, value in values.items():
                dotted = f"{section_name}.{key}"
                keep, value = check_retired(dotted, value, source, saved)
                if keep:
                    _set_field(sections[section_name], dotted, key, value, source)
        config = cls(**sections)
        if saved:  # fields the model never read had no effect: back to their defaults
            default = cls()
            for dotted in cls.field_names():
                if not config.declares(dotted):
                    section, key = dotted.split(".")
                    setattr(getattr(config, section), key, getattr(getattr(default, section), key))
        else:
            config.check_declared([f"{s}.{k}" for s, values in data.items() if values for k in values], source)
        config.validate(source)
        return config

    @classmethod
    def from_saved(cls, data: dict[str, Any] | None, source: str = "config") -> "Config":
        """`from_dict(saved=True)`: a config an earlier version wrote (every field listed)."""
        return cls.from_dict(data, source, saved=True)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, saved: bool = False) -> "Config":
        data, _ = read_yaml(path, "config", ConfigError)
        return cls.from_dict(data, source=str(path), saved=saved)

    def to_yaml(self, path: str | os.PathLike, header: str = "") -> None:
        """Write the fields the model reads (`to_file_dict`) atomically, after `header` (comment lines)."""
        atomic_write_text(Path(path), header + yaml.safe_dump(self.to_file_dict(), sort_keys=False))

    def declares(self, dotted: str) -> bool:
        """Whether this config's model reads `dotted` under some values of the other fields (MODEL_FIELDS)."""
        return model_reads(self.model.name, dotted)

    def check_declared(self, names: list[str], source: str) -> None:
        """Refuse setting a field the model never reads: it would look like a setting and do nothing."""
        unread = [name for name in names if not self.declares(name)]
        if unread:
            raise ConfigError(
                f"{source}: model.name={self.model.name!r} does not read {', '.join(unread)}; remove "
                f"{'it' if len(unread) == 1 else 'them'} (config.MODEL_FIELDS lists what each model reads)"
            )

    def with_overrides(self, assignments: list[str] | dict[str, Any], source: str = "--set") -> "Config":
        """Return a copy with `section.key=value` assignments applied (values parsed as YAML)."""
        data = self.to_dict()
        items = list(assignments.items() if isinstance(assignments, dict) else [
            parse_assignment(a, source) for a in assignments
        ])
        for dotted, value in items:
            section, _, key = dotted.partition(".")
            check_retired(dotted, value, source, saved=False)  # raises: a retired lever cannot be set
            if not key or section not in data:
                raise ConfigError(
                    f"{source}: {dotted!r} is not a config field; expected section.key with "
                    f"section in {sorted(data)}"
                )
            if key not in data[section]:
                raise ConfigError(
                    f"{source}: unknown field {dotted!r}; {section} has {sorted(data[section])}"
                )
            data[section][key] = value
        config = Config.from_dict(data, source=source, saved=True)
        config.check_declared([dotted for dotted, _ in items], source)
        return config

    def with_inference_overrides(self, assignments: list[str] | dict[str, Any], source: str = "--set") -> "Config":
        """`with_overrides` restricted to INFERENCE_KEYS: what may change on a trained checkpoint."""
        items = list(assignments.items() if isinstance(assignments, dict) else [
            parse_assignment(a, source) for a in assignments
        ])
        for dotted, _ in items:
            if dotted not in INFERENCE_KEYS:
                raise ConfigError(
                    f"{source}: {dotted!r} cannot change on a trained model (it changes its weights or training); "
                    f"inference-only fields: {', '.join(INFERENCE_KEYS)}"
                )
        return self.with_overrides(dict(items), source)

    @staticmethod
    def field_names() -> dict[str, type]:
        """All dotted field names with their annotated types (for search-space validation)."""
        out: dict[str, Any] = {}
        for section in dataclasses.fields(Config):
            hints = _type_hints(section.default_factory)  # type: ignore[arg-type]
            for f in dataclasses.fields(section.default_factory):  # type: ignore[arg-type]
                out[f"{section.name}.{f.name}"] = hints[f.name]
        return out

    # ---------------------------------------------------------------- validation

    def validate(self, source: str = "config") -> None:
        """Range and consistency checks that types alone cannot express."""

        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                value = _get(self, name)
                raise ConfigError(f"{source}: {name}={value!r} is out of range; allowed: {allowed}")

        m, d, lo, a, t, e = self.model, self.diffusion, self.loss, self.augment, self.train, self.eval
        need(m.dim >= 2, "model.dim", "an integer >= 2")
        need(m.n_heads >= 1 and m.dim % m.n_heads == 0, "model.n_heads", f"a divisor of model.dim={m.dim}")
        need(m.max_len >= 2, "model.max_len", ">= 2")
        for name in ("n_enc_layers", "n_c_layers", "n_dec_layers"):
            need(getattr(m, name) >= 1, f"model.{name}", ">= 1")
        for name in ("dropout", "emb_dropout"):
            need(0.0 <= getattr(m, name) < 1.0, f"model.{name}", "0 <= p < 1")
        need(m.lambda_u > 0, "model.lambda_u", "> 0")
        need(m.item_init_std > 0 and math.isfinite(m.item_init_std), "model.item_init_std", "a finite number > 0")
        need(d.steps >= 1, "diffusion.steps", ">= 1")
        need(d.beta_scale > 0, "diffusion.beta_scale", "> 0")
        need(d.infer_steps is None or 1 <= d.infer_steps <= d.steps, "diffusion.infer_steps",
             f"null or 1..diffusion.steps={d.steps}")
        need(d.val_infer_steps is None or 1 <= d.val_infer_steps <= d.steps, "diffusion.val_infer_steps",
             f"null or 1..diffusion.steps={d.steps}")
        if d.terminal_snr == "as_is":
            from dpgdiff.models.diffusion import terminal_alpha_bar  # numpy only; no cycle at import time

            end = terminal_alpha_bar(d.schedule, d.steps, d.beta_scale)
            if end > MAX_TERMINAL_ALPHA_BAR:
                raise ConfigError(
                    f"{source}: diffusion.schedule={d.schedule!r} with diffusion.steps={d.steps} and "
                    f"diffusion.beta_scale={d.beta_scale:g} ends at alpha_bar_T={end:.3g} > {MAX_TERMINAL_ALPHA_BAR} "
                    f"under diffusion.terminal_snr='as_is': x_T would be far from the N(0, I) noise that sampling "
                    f"starts from. Use diffusion.terminal_snr=zero, more steps, or a larger beta_scale"
                )
        need(d.sigma_data is None or (d.sigma_data > 0 and math.isfinite(d.sigma_data)), "diffusion.sigma_data",
             "null or a finite number > 0")
        need(0.0 <= d.cfg_p < 1.0, "diffusion.cfg_p", "0 <= p < 1")
        need(d.cfg_w >= 0.0, "diffusion.cfg_w", ">= 0")
        for name in ("lambda_diff", "lambda_rec", "lambda_s", "lambda_cl"):
            need(getattr(lo, name) >= 0.0 and math.isfinite(getattr(lo, name)), f"loss.{name}", "a finite number >= 0")
        need(lo.cl_tau > 0, "loss.cl_tau", "> 0")
        need(lo.ce_chunk_rows >= 1, "loss.ce_chunk_rows", ">= 1")
        need(lo.lambda_prefer >= 0.0 and math.isfinite(lo.lambda_prefer), "loss.lambda_prefer", "a finite number >= 0")
        need(lo.prefer_gamma > 0.0 and math.isfinite(lo.prefer_gamma), "loss.prefer_gamma", "a finite number > 0")
        need(0.0 <= lo.prefer_lambda <= 1.0, "loss.prefer_lambda", "0 <= lambda <= 1")
        need(0.0 < a.crop_eta <= 1.0, "augment.crop_eta", "0 < eta <= 1")
        for name in ("mask_gamma", "reorder_beta", "substitute_rho", "insert_rho"):
            need(0.0 <= getattr(a, name) <= 1.0, f"augment.{name}", "0 <= rate <= 1")
        need(t.epochs >= 1, "train.epochs", ">= 1")
        need(t.batch_size >= 1, "train.batch_size", ">= 1")
        need(t.lr > 0 and math.isfinite(t.lr), "train.lr", "a finite number > 0")
        need(t.weight_decay >= 0, "train.weight_decay", ">= 0")
        need(0.0 < t.adam_beta2 < 1.0, "train.adam_beta2", "0 < beta2 < 1")
        need(t.lr_step_epochs >= 1, "train.lr_step_epochs", ">= 1")
        need(0.0 < t.lr_step_gamma <= 1.0, "train.lr_step_gamma", "0 < gamma <= 1")
        need(0.0 < t.lr_plateau_factor < 1.0, "train.lr_plateau_factor", "0 < factor < 1")
        need(t.lr_plateau_patience >= 0, "train.lr_plateau_patience", ">= 0")
        need(t.grad_clip is None or t.grad_clip > 0, "train.grad_clip", "null or > 0")
        need(t.eval_every >= 1, "train.eval_every", ">= 1")
        need(t.patience >= 0, "train.patience", ">= 0")
        need(t.freeze_items_epochs >= 0, "train.freeze_items_epochs", ">= 0")
        if t.freeze_items_epochs > 0 and t.init_from is None:
            raise ConfigError(
                f"{source}: train.freeze_items_epochs={t.freeze_items_epochs} freezes the item tables that "
                f"train.init_from copies, but train.init_from is null; set it to a trained checkpoint (stage a, "
                f"e.g. a SASRec's best.pt) or set train.freeze_items_epochs=0"
            )
        need(t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"), "train.device",
             "auto, cpu, cuda or cuda:N")
        need(t.num_threads is None or t.num_threads >= 1, "train.num_threads", "null or >= 1")
        need(e.n_negatives >= 1, "eval.n_negatives", ">= 1")
        need(e.batch_size >= 1, "eval.batch_size", ">= 1")
        need(0.0 <= e.noise_rate <= 1.0, "eval.noise_rate", "0 <= rate <= 1")
        for ok, name, allowed in (*self.c2dsr.ranges(), *self.abxi.ranges()):
            need(ok, name, allowed)


# Fields that only change how a trained model scores (no parameter depends on them): `evaluate`, `diagnose`
# and `load_model(..., overrides=...)` accept them on an existing checkpoint. train.seed seeds the reverse
# process's noise at evaluation (the scorer's generator).
INFERENCE_KEYS = (
    "diffusion.sampler", "diffusion.infer_steps", "diffusion.ddpm_variance", "diffusion.val_sampler",
    "diffusion.val_infer_steps", "diffusion.cfg_w", "model.score_alpha", "model.score_softmax", "model.lambda_infer", "train.seed",
    *(f"eval.{f.name}" for f in dataclasses.fields(EvalConfig)),
)


def retired_setting(dotted: str, value: Any) -> bool:
    """`dotted: value` sets a retired lever (RETIRED, RETIRED_VALUES) to something other than today's behaviour."""
    if dotted in RETIRED:
        return RETIRED[dotted][0] != value
    return isinstance(value, str) and (dotted, value) in RETIRED_VALUES  # both retired values are strings


def check_retired(dotted: str, value: Any, source: str, saved: bool) -> tuple[bool, Any]:
    """(keep, value) for `dotted: value` read from `source`. What an earlier version saved (`saved`) drops a retired
    field at today's behaviour or one that only shaped training (keep False), and a retired value of a kept field
    loads as its replacement; any other retired setting, and every one not `saved`, is a ConfigError naming the
    field and the commit that still has it."""
    if dotted in RETIRED:
        today, train_only = RETIRED[dotted]
        if saved and (value == today or train_only):
            return False, value
        what = f"{value!r} is not today's behaviour ({today!r}). " if value != today else "remove it. "
    elif retired_setting(dotted, value):
        if saved:
            return True, RETIRED_VALUES[dotted, value]
        what, dotted = "choose another value. ", f"{dotted}={value!r}"
    else:
        return True, value
    raise ConfigError(f"{source}: {dotted} was retired (issue 37: tried and not kept; BENCHMARKS.md has its "
                      f"verdict); {what}Commit {RETIRED_AT} is the last that has it")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _get(config: Config, dotted: str) -> Any:
    section, key = dotted.split(".", 1)
    return getattr(getattr(config, section), key)


def parse_assignment(assignment: str, source: str, form: str = "section.key=value") -> tuple[str, Any]:
    """"name=value" -> (name, value parsed as YAML, or the raw text if it is not valid YAML).

    `source` (the flag or file) and `form` (what was expected) make the error message.
    """
    if "=" not in assignment:
        raise ConfigError(f"{source}: {assignment!r} must look like {form}")
    dotted, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return dotted.strip(), value


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    """A config section's field annotations, resolved once per class: `typing.get_type_hints` evaluates the string
    annotations (`from __future__ import annotations`) anew on every call, and a search's driver resolves a config
    per trial (bench/scale_search.py: 0.3 s per trial on a loaded 2-core machine before this cache)."""
    return typing.get_type_hints(cls)


def _set_field(section: Any, dotted: str, key: str, value: Any, source: str) -> None:
    names = {f.name for f in dataclasses.fields(section)}
    if key not in names:
        raise ConfigError(f"{source}: unknown field {dotted!r}; allowed: {sorted(names)}")
    hint = _type_hints(type(section))[key]
    setattr(section, key, coerce_value(value, hint, dotted, source))


def coerce_value(value: Any, hint: Any, dotted: str, source: str) -> Any:
    """Check `value` against the annotation; ints and numeric strings pass for floats, nothing else is cast."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union and type(None) in args:  # Optional[X]
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce_value(value, inner, dotted, source)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {dotted}={value!r} is not allowed; choose one of {list(args)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {dotted}={value!r} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {dotted}={value!r} must be an integer")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {dotted}={value!r} must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {dotted}={value!r} must be a string")
        return value
    raise TypeError(f"unsupported config annotation {hint!r} for {dotted}")  # programming error
