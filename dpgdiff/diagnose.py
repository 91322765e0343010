"""Diagnostics of a trained diffusion recommender: does x̂_0 depend on x_t, and does the number of reverse steps matter?

    python -m dpgdiff diagnose --checkpoint runs/a/best.pt        # prints the tables below

A denoiser can learn to ignore x_t when the forward process destroys x_0 within a few steps (issue 8 §1):
with item vectors of std 0.1 and N(0, I) noise, the SNR ᾱ_t·σ²/(1 - ᾱ_t) falls below 0.1 by t = 2, and the
reverse chain, K and the sampler are then inert. This module measures that on a trained model:
- the item tables' scale and the scale of x_0 as diffused (after `model.x0_norm`);
- per timestep t: ᾱ_t, the SNR of q(x_t | x_0), the x̂_0 error (MSE, relative to E[x_0²]), the rank of the
  target under x̂_0 alone and under Eq. 15's x̂_0 + α·ĝ_{d*}, and how much x̂_0 moves when x_t is replaced by
  fresh noise (0 = x̂_0 ignores x_t);
- test NDCG@10 (sampled and full) at K reverse steps, through the shared evaluator.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from dpgdiff.config import Config
from dpgdiff.data.dataset import DOMAIN_NAMES, DOMAIN_X, DOMAIN_Y


@dataclass
class StepRow:
    """Per-timestep figures over the sampled cases (both domains pooled; ranks within the target's domain)."""

    t: int
    alpha_bar: float
    snr: float  # ᾱ_t·E[x_0²] / (1 - ᾱ_t): signal-to-noise ratio of x_t at the scale of the diffused x_0
    mse: float  # mean over cases and dims of (x̂_0 - x_0)²
    rel_mse: float  # mse / E[x_0²] (1 = no better than predicting 0)
    mrr_x0: float  # full-ranking MRR of the target under scores x̂_0·E_{d*}
    median_rank_x0: float
    mrr_eq15: float  # the same under Eq. 15's x̂_0 + α·ĝ_{d*}
    sensitivity: float  # E‖x̂_0(x_t) - x̂_0(x_t')‖ / E‖x̂_0(x_t)‖, x_t' = fresh noise at the same t


@dataclass
class StepsRow:
    """Test metrics with K reverse steps (the shared evaluator, all test cases)."""

    infer_steps: int
    sampler: str
    seconds: float
    metrics: dict[str, float]  # e.g. "x_ndcg10", "y_full_ndcg10"


@dataclass
class DiffusionDiagnostics:
    model: str
    steps: int
    schedule: str
    terminal_snr: str
    x0_norm: str
    n_cases: int
    table_rms: dict[str, float]  # per-element RMS of E_x, E_y
    table_row_norm: dict[str, float]  # mean L2 norm of the rows of E_x, E_y
    x0_rms: float  # per-element RMS of x_0 as diffused (after x0_norm)
    which: str = "test"  # the cases measured: test or valid
    per_t: list[StepRow] = field(default_factory=list)
    per_k: list[StepsRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        lines = [
            f"{self.model}: T={self.steps} {self.schedule} (terminal_snr={self.terminal_snr}), x0_norm={self.x0_norm}; "
            f"{self.n_cases} cases",
            "item tables: " + ", ".join(
                f"E_{d} RMS {self.table_rms[d]:.4f} (row norm {self.table_row_norm[d]:.3f})" for d in self.table_rms
            ) + f"; x_0 as diffused: RMS {self.x0_rms:.4f}",
            "",
            f"{'t':>4} {'alpha_bar':>9} {'SNR':>9} {'MSE':>9} {'relMSE':>7} {'MRR(x0)':>8} {'medRank':>8} "
            f"{'MRR(Eq15)':>9} {'sensitivity':>11}",
        ]
        for r in self.per_t:
            lines.append(
                f"{r.t:>4d} {r.alpha_bar:>9.4f} {r.snr:>9.3g} {r.mse:>9.4g} {r.rel_mse:>7.3f} {r.mrr_x0:>8.4f} "
                f"{r.median_rank_x0:>8.0f} {r.mrr_eq15:>9.4f} {r.sensitivity:>11.4f}"
            )
        if self.per_k:
            lines += ["", f"{self.which} metrics (x100) by reverse steps K (shared evaluator, sampled = 1 + negatives):",
                      f"{'K':>4} {'sampler':>7} {'sec':>6} {'X NDCG@10':>10} {'Y NDCG@10':>10} {'X fullN@10':>11} "
                      f"{'Y fullN@10':>11}"]
            for r in self.per_k:
                m = r.metrics
                lines.append(
                    f"{r.infer_steps:>4d} {r.sampler:>7} {r.seconds:>6.1f} {100 * m.get('x_ndcg10', math.nan):>10.2f} "
                    f"{100 * m.get('y_ndcg10', math.nan):>10.2f} {100 * m.get('x_full_ndcg10', math.nan):>11.2f} "
                    f"{100 * m.get('y_full_ndcg10', math.nan):>11.2f}"
                )
        return "\n".join(lines)


def diagnose(
    model: torch.nn.Module,
    dataset: Any,
    config: Config,
    *,
    which: str = "test",
    n_cases: int = 2000,
    timesteps: Optional[Sequence[int]] = None,
    infer_steps: Sequence[Optional[int]] = (1, 2, 4, 8, 16, None),
    sampler: Optional[str] = None,
    seed: int = 0,
    batch_size: int = 500,
) -> DiffusionDiagnostics:
    """Measure the diffusion part of `model` (a DPG-Diff or DiffuRec; in eval mode) on `which` cases.

    timesteps: default every t for T <= 32, else 32 evenly spaced; infer_steps: K values (None = T)."""
    from dpgdiff.training import evaluate_model

    if not hasattr(model, "predict_x0") or not hasattr(model, "diffused_x0"):
        raise ValueError(f"{config.model.name} is not a diffusion model: nothing to diagnose")
    model.eval()
    schedule = model.schedule
    T = schedule.steps
    if timesteps is None:
        timesteps = list(range(T)) if T <= 32 else sorted({int(round(x)) for x in np.linspace(0, T - 1, 32)})
    cases = dataset.valid if which == "valid" else dataset.test
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(cases), size=min(n_cases, len(cases)), replace=False))
    history = torch.from_numpy(cases.history[pick])
    target = torch.from_numpy(cases.target[pick])
    target_domain = torch.from_numpy(cases.target_domain[pick].astype(np.int64))
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)

    tables = {DOMAIN_NAMES[d]: model.table(d).detach().float() for d in (DOMAIN_X, DOMAIN_Y)}
    with torch.no_grad():
        x0_all = model.diffused_x0(target.to(device)).float()
    x0_power = float(x0_all.pow(2).mean())
    out = DiffusionDiagnostics(
        model=config.model.name, steps=T, schedule=config.diffusion.schedule,
        terminal_snr=config.diffusion.terminal_snr, n_cases=len(pick),
        x0_norm="none" if config.model.name == "diffurec" else config.model.x0_norm,
        table_rms={k: float(v.pow(2).mean().sqrt()) for k, v in tables.items()},
        table_row_norm={k: float(v.norm(dim=1).mean()) for k, v in tables.items()},
        x0_rms=math.sqrt(x0_power), which=which,
    )
    alpha_bar = schedule.alphas_cumprod.cpu().numpy()
    for t in timesteps:
        sq_err, moved, size = 0.0, 0.0, 0.0
        recip_x0, recip_eq15, ranks = [], [], []
        for start in range(0, len(pick), batch_size):
            sl = slice(start, start + batch_size)
            hist, td, x0 = history[sl].to(device), target_domain[sl].to(device), x0_all[sl]
            tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=device)
            noise = torch.randn(x0.shape, generator=gen).to(device, x0.dtype)
            fresh = torch.randn(x0.shape, generator=gen).to(device, x0.dtype)
            x_t = schedule.add_noise(x0, noise, tt)
            with torch.no_grad():
                x0_hat, g = model.predict_x0(hist, td, x_t, tt)
                x0_hat_fresh, _ = model.predict_x0(hist, td, fresh, tt)  # x_t replaced by fresh noise
            x0_hat, x0_hat_fresh = x0_hat.float(), x0_hat_fresh.float()
            sq_err += float((x0_hat - x0).pow(2).sum())
            moved += float((x0_hat - x0_hat_fresh).norm(dim=1).sum())
            size += float(x0_hat.norm(dim=1).sum())
            eq15 = x0_hat if g is None else x0_hat + config.model.score_alpha * g.float()
            for d in (DOMAIN_X, DOMAIN_Y):
                rows = (td == d).nonzero().flatten()
                if rows.numel() == 0:
                    continue
                local = (target[sl].to(device)[rows] - 1 - (dataset.items.n_items_x if d == DOMAIN_Y else 0))
                table = tables[DOMAIN_NAMES[d]].to(device)
                for rep, sink in ((x0_hat[rows], recip_x0), (eq15[rows], recip_eq15)):
                    scores = rep @ table.t()
                    pos = scores.gather(1, local[:, None])
                    rank = 1 + (scores > pos).sum(1).float() + 0.5 * ((scores == pos).sum(1).float() - 1)
                    sink.append((1.0 / rank).cpu())
                    if sink is recip_x0:
                        ranks.append(rank.cpu())
        n = len(pick)
        mse = sq_err / (n * x0_all.shape[1])
        ab = float(alpha_bar[t])
        out.per_t.append(StepRow(
            t=int(t), alpha_bar=ab, snr=ab * x0_power / max(1.0 - ab, 1e-300), mse=mse, rel_mse=mse / x0_power,
            mrr_x0=float(torch.cat(recip_x0).mean()), median_rank_x0=float(torch.cat(ranks).median()),
            mrr_eq15=float(torch.cat(recip_eq15).mean()), sensitivity=moved / max(size, 1e-12),
        ))

    sampler = sampler or config.diffusion.sampler
    for k in infer_steps:
        steps = T if k is None else int(k)
        start = time.perf_counter()
        result = evaluate_model(model, dataset, which, config, sampler=sampler, infer_steps=steps)
        metrics = {f"{d}_{name}": float(v) for d, ms in result.per_domain.items() for name, v in ms.items()}
        out.per_k.append(StepsRow(steps, sampler, time.perf_counter() - start, metrics))
    return out
