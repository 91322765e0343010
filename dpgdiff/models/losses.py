"""Losses: L_diff (Eq. 6), domain-restricted CE L_rec (Eq. 10-12), tri-view InfoNCE (Eq. 13), PreferDiff's loss.

Logits are computed only against the target domain's table: rows are split by d* and each group
is multiplied by its own E_{d*} (spec §4.1, §8), so no work is spent on the other domain's items.
The full-softmax CE is one autograd Function (`SoftmaxCrossEntropy`): on CPU the (rows, items) logits
are the largest tensor of a training step, and F.cross_entropy walks it about seven times
(log_softmax output, NLL's zero-filled gradient, log_softmax backward); the Function walks it three
times, turning the saved logits into their own gradient in place. `chunked` bounds it to one chunk.
On CPU the logits live in buffers reused from step to step (`LogitsWorkspace`), not fresh allocations.
"""

from __future__ import annotations

import threading
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from dpgdiff.data.dataset import DOMAIN_X, DOMAIN_Y


def diffusion_loss(x0_hat: torch.Tensor, x0: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """L_diff = mean_batch [w ·] mean_dims (x̂_0 - x_0)² (Eq. 6, x_0-prediction; spec §3.4); x0_hat, x0 (B, d).

    The mean over the d dims is Eq. 6's squared norm divided by d (λ_diff = 1 here is the paper's λ_diff = 1/d).
    weight (B,): per-example weights (diffusion.precond=edm's 1/c_out²), None = 1."""
    if weight is None:
        return F.mse_loss(x0_hat, x0)
    return (weight * (x0_hat - x0).pow(2).mean(-1)).mean()


def cosine_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(1 − cos(pred, target))² per row, (B,); pred, target (B, d). PreferDiff's reconstruction error: blind to
    scale, as the ranking by x̂_0·Eᵀ is (without an item bias) to x̂_0's norm."""
    return (1.0 - F.cosine_similarity(pred, target, dim=-1)).pow(2)


def negative_centroids(x0: torch.Tensor, target: torch.Tensor,
                       target_domain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PreferDiff's in-batch negatives, one centroid per row -> (centroids (B, d), has_negative (B,) bool).

    x0 (B, d) the rows' diffused targets, target (B,) their item ids, target_domain (B,). Row i's negatives are the
    other rows' targets in i's target domain (x̂_0 is scored against that domain's table only) that are not i's own
    item; their mean is the one negative it is contrasted with (the paper's centroid of V negatives, which costs
    one denoiser pass whatever V is). A row with no such negative gets a zero centroid and has_negative False."""
    pick = (target_domain[:, None] == target_domain[None, :]) & (target[:, None] != target[None, :])  # (B, B)
    count = pick.sum(1)
    centroids = (pick.to(x0.dtype) @ x0) / count.clamp_min(1).to(x0.dtype)[:, None]
    return centroids, count > 0


def preference_loss(err_pos: torch.Tensor, err_neg: torch.Tensor, has_negative: torch.Tensor, gamma: float,
                    lam: float) -> torch.Tensor:
    """PreferDiff's objective (Liu et al., ICLR 2025, arXiv 2410.13117): −(1−λ)·log σ(−γ·(err⁺ − err⁻)) + λ·err⁺.

    err_pos, err_neg (B,): the positive's and the negative centroid's reconstruction errors at the same t;
    has_negative (B,) bool: rows without a negative leave the preference term (the mean is over the others) but
    keep err⁺. Per row inside the log σ, averaged outside, as the paper's expectation is written; the official
    code (lswhim/PreferDiff) averages each error over the batch first and takes one log σ of the difference."""
    keep = has_negative.to(err_pos.dtype)
    prefer = -(F.logsigmoid(-gamma * (err_pos - err_neg)) * keep).sum() / keep.sum().clamp_min(1.0)
    return (1.0 - lam) * prefer + lam * err_pos.mean()


def _log_softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise log_softmax of logits (n, V) written over its input (the kernel works row by row and
    reads each element before writing it), so no second (n, V) buffer exists."""
    return torch.ops.aten._log_softmax.out(logits, 1, False, out=logits)


def _softmax_minus_onehot_(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """In place: softmax rows probs (n, V) -> softmax - onehot(target) = dCE/dlogits; returns probs."""
    probs[torch.arange(probs.shape[0], device=probs.device), target] -= 1.0
    return probs


class LogitsWorkspace:
    """Reusable CPU buffers for the CE's (rows, items) logits, one free list per thread.

    Why: a fresh (rows, items) buffer is tens of MB, which the C allocator takes from the kernel with
    mmap; every page is then faulted in and zeroed on first write and handed back on free, every step.
    Reusing them made a d=64 DPG-Diff step on 2 cores 1.13x faster (BENCHMARKS.md, issue 9; page faults
    per step: bench/profile_step.py). A buffer taken here goes back to the free list when
    the backward pass that consumed it is done with it; one never given back (no backward) is freed by
    Python as usual. GPUs have a caching allocator already: there `take` is a plain new_empty."""

    headroom = 1.25  # rows per domain vary from batch to batch: a slightly larger batch still fits
    max_free = 4

    def __init__(self) -> None:
        self._local = threading.local()

    def _free(self) -> list[torch.Tensor]:
        if not hasattr(self._local, "free"):
            self._local.free = []
        return self._local.free

    def take(self, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
        """An uninitialised (rows, cols) tensor with like's dtype and device."""
        if like.device.type != "cpu":
            return like.new_empty(rows, cols)
        need, free = rows * cols, self._free()
        fits = [i for i, b in enumerate(free) if b.dtype == like.dtype and b.numel() >= need]
        if fits:
            flat = free.pop(min(fits, key=lambda i: free[i].numel()))
        else:  # the free buffers are too small (or of another dtype): let them go rather than hold them
            free.clear()
            flat = like.new_empty(int(need * self.headroom))
        return flat[:need].view(rows, cols)

    def give(self, buffer: torch.Tensor) -> None:
        """Hand back a tensor from `take` once nothing reads it any more."""
        flat = buffer._base
        if buffer.device.type != "cpu" or flat is None:
            return
        free = self._free()
        free.append(flat)
        if len(free) > self.max_free:
            free.remove(min(free, key=lambda b: b.numel()))

    def clear(self) -> None:
        """Free this thread's buffers (e.g. after training, before a long evaluation)."""
        self._free().clear()


LOGITS = LogitsWorkspace()


class SoftmaxCrossEntropy(torch.autograd.Function):
    """Per-row CE_i = logsumexp(h_i·E^T) - h_i·E[target_i] over all rows of E (full softmax), as (n,).

    h (n, d), table E (V, d), target (n,) int64. chunk_rows None: the (n, V) logits of the forward
    pass become their log-softmax in place and, in the backward pass, their own gradient
    (exp -> softmax, minus one-hot), with the same matmuls as autograd's mm + cross_entropy. The
    per-row weights of the incoming gradient are applied to the (n, d) sides of the two gradient
    matmuls, never to the (n, V) matrix. chunk_rows = c: never more than a (c, V) block of logits;
    the forward pass keeps only the per-row logsumexp and the backward pass recomputes each block
    (one more h·E^T matmul per step: for memory, not speed)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, table: torch.Tensor, target: torch.Tensor, chunk_rows: Optional[int]):
        n = h.shape[0]
        step = n if chunk_rows is None else max(int(chunk_rows), 1)
        loss = h.new_empty(n)
        lse = h.new_empty(n)
        logp = None
        for lo in range(0, n, step):
            if logp is not None:  # chunked: the previous chunk's block is free again
                LOGITS.give(logp)
            tgt = target[lo:lo + step, None]
            hc = h[lo:lo + step]
            logp = torch.mm(hc, table.t(), out=LOGITS.take(hc.shape[0], table.shape[0], h))
            target_logit = logp.gather(1, tgt)[:, 0]
            loss[lo:lo + step] = -_log_softmax_(logp).gather(1, tgt)[:, 0]
            lse[lo:lo + step] = target_logit + loss[lo:lo + step]
        ctx.save_for_backward(h, table, target, lse)
        ctx.step = step
        if chunk_rows is None:
            ctx.logp = logp  # consumed (in place) by the first backward
        else:
            ctx.logp = None
            LOGITS.give(logp)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        h, table, target, lse = ctx.saved_tensors
        step, n = ctx.step, h.shape[0]
        kept, ctx.logp = ctx.logp, None  # a second backward (retain_graph) recomputes
        grad_h = h.new_empty(h.shape) if ctx.needs_input_grad[0] else None
        grad_table = None
        for lo in range(0, n, step):
            hc, w = h[lo:lo + step], grad_loss[lo:lo + step, None]
            if kept is not None:
                probs = kept.exp_()
            else:
                probs = torch.mm(hc, table.t(), out=LOGITS.take(hc.shape[0], table.shape[0], hc))
                probs.sub_(lse[lo:lo + step, None]).exp_()
            g = _softmax_minus_onehot_(probs, target[lo:lo + step])
            if grad_h is not None:
                grad_h[lo:lo + step] = (g @ table).mul_(w)
            if ctx.needs_input_grad[1]:
                hw = hc * w
                grad_table = g.t() @ hw if grad_table is None else grad_table.addmm_(g.t(), hw)
            LOGITS.give(g)
        return grad_h, grad_table, None, None


def softmax_cross_entropy(
    h: torch.Tensor, table: torch.Tensor, target: torch.Tensor, chunk_rows: Optional[int] = None
) -> torch.Tensor:
    """Per-row full-softmax CE of logits h·E^T against target, (n,); see SoftmaxCrossEntropy.

    Under autocast it is the plain mm + F.cross_entropy (autocast runs the CE in fp32 there), except
    chunked, which then runs in fp32."""
    if torch.is_autocast_enabled(h.device.type):
        if chunk_rows is None:
            return F.cross_entropy(h @ table.t(), target, reduction="none")
        with torch.autocast(h.device.type, enabled=False):
            return SoftmaxCrossEntropy.apply(h.float(), table.float(), target, chunk_rows)
    return SoftmaxCrossEntropy.apply(h, table, target, chunk_rows)


def domain_cross_entropy(
    heads: Sequence[torch.Tensor],
    target_local: torch.Tensor,
    target_domain: torch.Tensor,
    tables: Sequence[torch.Tensor],
    scale: float = 1.0,
    norm: str = "per_domain_mean",
    impl: str = "full",
    chunk_rows: int = 256,
    biases: Optional[Sequence[Optional[torch.Tensor]]] = None,
) -> list[torch.Tensor]:
    """CE of each head's logits s·h·E_{d*}^T (+ b_{d*}) against the target, summed over domains (Eq. 10-12).

    heads: H tensors (B, d) (e.g. x̂_0, ĝ_{d*}); target_local (B,) local item index within d*;
    target_domain (B,); tables: (E_x, E_y) without PAD rows, (N_d, d); biases: None, or the per-item
    biases (b_x (N_x,), b_y (N_y,)) of model.item_bias, added to every logit.
    norm: per_domain_mean -> mean over X-target rows + mean over Y-target rows (Σ_d of Eq. 10);
          global_mean -> sum over all rows / B (C2DSR's weighting by domain frequency).
    impl: full softmax over the domain; `chunked`: the same loss and gradients, holding at most
          `chunk_rows` rows of logits at a time (SoftmaxCrossEntropy).
    Returns one scalar loss per head. The heads share one matmul per domain (stacked rows)."""
    n_heads = len(heads)
    batch = target_local.shape[0]
    totals = [heads[0].new_zeros(()) for _ in range(n_heads)]
    for domain in (DOMAIN_X, DOMAIN_Y):
        rows = (target_domain == domain).nonzero(as_tuple=True)[0]
        n = rows.numel()
        if n == 0:
            continue
        h = torch.cat([head.index_select(0, rows) for head in heads], 0)  # (H·n, d)
        tgt = target_local.index_select(0, rows)
        table = tables[domain]
        bias = biases[domain] if biases is not None else None
        if impl not in ("full", "chunked"):
            raise ValueError(f"unknown ce_impl {impl!r}; expected 'full' or 'chunked'")
        hs = h * scale if scale != 1.0 else h  # s·(h·E^T) = (s·h)·E^T: scale the small side
        if bias is not None:  # [s·h, 1]·[E, b]^T = s·h·E^T + b: the bias rides in the same matmul
            hs = torch.cat([hs, hs.new_ones(hs.shape[0], 1)], 1)
            table = torch.cat([table, bias[:, None].to(table.dtype)], 1)
        per_row = softmax_cross_entropy(hs, table, tgt.repeat(n_heads), None if impl == "full" else chunk_rows)
        per_row = per_row.view(n_heads, n)
        denom = n if norm == "per_domain_mean" else batch
        for i in range(n_heads):
            totals[i] = totals[i] + per_row[i].sum() / denom
    return totals


def info_nce(a: torch.Tensor, b: torch.Tensor, sim: str = "cos", tau: float = 0.2) -> torch.Tensor:
    """Symmetric InfoNCE between two views (B, d) with 2B-2 in-batch negatives (SimCLR / CoSeRec NCELoss).

    Row i of `a` is positive with row i of `b`; all other rows of both views are negatives (Eq. 13).
    sim = cos: cosine / τ; sim = dot: raw dot product / τ (τ = 1 is the paper-literal form)."""
    z = torch.cat([a, b], 0)
    if sim == "cos":
        z = F.normalize(z, dim=-1)
    elif sim != "dot":
        raise ValueError(f"unknown cl_sim {sim!r}; expected 'cos' or 'dot'")
    n = a.shape[0]
    logits = (z @ z.t()) / tau
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    labels = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, labels)


def tri_view_cl(views: Sequence[torch.Tensor], sim: str = "cos", tau: float = 0.2) -> torch.Tensor:
    """L_tri-cl: mean symmetric InfoNCE over every pair of views, e.g. (c, d), (c, aug), (d, aug) (Eq. 13)."""
    pairs = [(i, j) for i in range(len(views)) for j in range(i + 1, len(views))]
    if not pairs:
        raise ValueError("tri_view_cl needs at least two views")
    return sum(info_nce(views[i], views[j], sim, tau) for i, j in pairs) / len(pairs)
