"""The common config sections (model, diffusion, loss, augment, train, eval): every field, its default, and why."""

# Defaults follow ../shared/design/model-spec.md §6 except where a comment says why not (mainly `model.dim`, kept
# CPU-sized; `configs/paper.yaml` has the paper's). The ranges are checked in one place, `Config.validate`
# (dpgdiff/config.py); the c2dsr and abxi sections are in dpgdiff/config_baselines.py.

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional


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
    # ᾱ_T <= 0.05 (checked in Config.validate): trunc_lin with T <= 20, or beta_scale < 1, would not (issue 8 §2).
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
