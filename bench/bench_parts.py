"""What the pieces of a DPG-Diff training step cost on this machine: matmul shapes, one attention block, the Tri-CL
branch, and whole steps with components switched off.

    DPGDIFF_DATA_DIR=DIR python bench/bench_parts.py --dim 64 [--threads 2] [--rounds 6] [--parts matmuls,block,cl,steps]

- matmuls: the step's characteristic matmul shapes at this d (the full CE's logits for batch 512 with two heads,
  its two gradient matmuls, the FFN of a block over 512 x 15 tokens), each into a fresh output and into a
  reused one, in GFLOP/s, beside the square 2048² rate. A fresh output of tens of MB is page-faulted in by the
  kernel on first write; the gap between the two columns is that cost (issue 9's LogitsWorkspace). Also the CE's
  forward in other layouts (E @ h^T, row blocks, oneDNN), and what one pass over the logits costs beside that matmul.
- block: one pre-LN self-attention block (d, 2 heads, dropout 0.3) forward + backward over 512 x 15 tokens,
  its GFLOP/s and the share of its CPU time in the exact GELU.
- cl: the Tri-CL branch of the loss (spec §4.2, Eq. 13), forward + backward: the augmenter, Encoder_c over the
  augmented view (loss.cl_aug_view=history_only), the three InfoNCE pairs.
- steps: median s/step of whole optimizer steps of the default config and of copies with loss.lambda_cl=0 (no
  Tri-CL), loss.lambda_s=0 (no L^s head), model.disentangled_encoder=false, and SASRec, interleaved round by round.

All medians; timings run inside `runtime_settings` as `dpgdiff.train` runs them. Shares and ratios carry across
machines; absolute times depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
import time

import _common  # first: it imports dpgdiff before torch (the MKL fix for AMD CPUs, dpgdiff/mkl_amd.py)
import torch



def timed(fn, repeats: int) -> float:
    return _common.median_seconds(fn, repeats, warmup=1)


def _onednn_forward(h: torch.Tensor, table: torch.Tensor):
    """h @ E^T through oneDNN (torch's mkldnn_linear), the output left in oneDNN's layout (a lower bound on that
    path: the CE would need it back as a dense tensor); None where this torch has no oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return None
    table_mkldnn = table.to_mkldnn()
    return lambda: torch._C._nn.mkldnn_linear(h.to_mkldnn(), table_mkldnn)


def matmuls(dim: int, repeats: int) -> None:
    print(f"matmuls at d={dim} (GFLOP/s; 'fresh': a new output tensor per call, 'reused': out= one kept buffer)")
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    print(f"  square {n}²: {2 * n ** 3 / timed(lambda: a @ b, repeats) / 1e9:.1f}")
    rows, items, tokens = 554, 34886, 512 * 15
    h, table = torch.randn(rows, dim), torch.randn(items, dim)
    logits = torch.randn(rows, items)
    x, w1 = torch.randn(tokens, dim), torch.randn(dim, 4 * dim)
    cases = [
        ("CE forward  h @ E^T", lambda: h @ table.t(), lambda o: torch.mm(h, table.t(), out=o), (rows, items), rows * items * dim),
        ("CE forward  h @ (E^T contiguous, incl. copy)", lambda: h @ table.t().contiguous(), None, None, rows * items * dim),
        ("CE forward  E @ h^T (logits transposed)", lambda: table @ h.t(), lambda o: torch.mm(table, h.t(), out=o), (items, rows), rows * items * dim),
        ("CE forward  h @ E^T in blocks of 128 rows", None,
         lambda o: [torch.mm(h[i:i + 128], table.t(), out=o[i:i + 128]) for i in range(0, rows, 128)], (rows, items),
         rows * items * dim),
        ("CE forward  oneDNN mkldnn_linear (no to_dense)", _onednn_forward(h, table), None, None, rows * items * dim),
        ("CE backward g @ E", lambda: logits @ table, lambda o: torch.mm(logits, table, out=o), (rows, dim), rows * items * dim),
        ("CE backward g^T @ h", lambda: logits.t() @ h, lambda o: torch.mm(logits.t(), h, out=o), (items, dim), rows * items * dim),
        ("FFN up      x @ W1", lambda: x @ w1, lambda o: torch.mm(x, w1, out=o), (tokens, 4 * dim), tokens * dim * 4 * dim),
    ]
    for name, fresh, into, shape, macs in cases:
        line = f"  {name:<46} fresh " + (f"{2 * macs / timed(fresh, repeats) / 1e9:6.1f}" if fresh else "     -")
        if into is not None:
            out = torch.empty(shape)
            line += f"   reused {2 * macs / timed(lambda: into(out), repeats) / 1e9:6.1f}"
        print(line)
    # What one pass over the logits costs beside the forward matmul that writes them (log-probabilities as values).
    logp = torch.log_softmax(logits, 1)
    work = torch.empty_like(logp)
    mm_ms = 1e3 * timed(lambda: torch.mm(h, table.t(), out=work), repeats)
    passes = {"log_softmax in place": lambda: torch.ops.aten._log_softmax.out(work, 1, False, out=work),
              "exp_": lambda: work.exp_(), "fill_": lambda: work.fill_(0.0)}
    costs = []
    for name, fn in passes.items():
        costs.append(f"{name} {1e3 * timed(lambda: (work.copy_(logp), fn()), repeats) - 1e3 * timed(lambda: work.copy_(logp), repeats):.1f}")
    print(f"  one pass over the ({rows}, {items}) logits, ms: {', '.join(costs)}; the forward matmul writing them: {mm_ms:.1f}")


def block(dim: int, repeats: int) -> None:
    from dpgdiff.models.layers import SelfAttentionBlock, self_attention_mask

    batch, length = 512, 15
    blk = SelfAttentionBlock(dim, 2, 0.3).train()
    x = torch.randn(batch, length, dim, requires_grad=True)
    valid = torch.rand(batch, length) > 0.3
    valid[:, -1] = True
    mask = self_attention_mask(valid)

    def step():
        y, _ = blk(x, mask)
        y.sum().backward()

    seconds = timed(step, repeats)
    flop = 3 * 2 * batch * length * 12 * dim * dim  # qkv 3d², proj d², FFN 8d² per token; backward = 2x forward
    with torch.profiler.profile() as prof:
        for _ in range(repeats):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    gelu = sum(e.self_cpu_time_total for e in events if e.key in ("aten::gelu", "aten::gelu_backward"))
    print(f"attention block d={dim}, 512 x 15 tokens, fwd+bwd: {seconds * 1e3:.1f} ms, {flop / seconds / 1e9:.1f} GFLOP/s "
          f"({flop / 1e9:.2f} GFLOP); exact GELU {100 * gelu / total:.1f}% of its CPU time")


def tri_cl(model, history: torch.Tensor, repeats: int) -> None:
    from dpgdiff.models.encoder import trim_padding
    from dpgdiff.models.losses import tri_view_cl

    generator = torch.Generator().manual_seed(0)
    aug = trim_padding(model.augmenter(history, generator))
    raw = model.embedding.lookup(aug.flatten()).view(*aug.shape, model.dim).detach().requires_grad_()
    den = model.denoiser

    def encoder_c():
        valid = aug != 0
        states, _ = den.encoder_c(model.embedding.with_positions(raw, valid), valid, den.attn_mode)
        states[:, -1].sum().backward()

    views = [torch.randn(len(history), model.dim, requires_grad=True) for _ in range(3)]
    print(f"Tri-CL branch, batch {len(history)}, fwd+bwd: augmenter {timed(lambda: model.augmenter(history, generator), repeats) * 1e3:.1f} ms, "
          f"Encoder_c over the augmented view {timed(encoder_c, repeats) * 1e3:.1f} ms, "
          f"3 InfoNCE pairs {timed(lambda: tri_view_cl(views, 'cos', 0.2).backward(), repeats) * 1e3:.1f} ms")


def steps(dataset, base: list[str], rounds: int) -> None:
    from dpgdiff.config import Config
    from dpgdiff.models import build_model
    from dpgdiff.training import make_optimizer, seed_everything, train_step

    variants = {"default": [], "loss.lambda_cl=0": ["loss.lambda_cl=0"], "loss.lambda_s=0": ["loss.lambda_s=0"],
                "model.disentangled_encoder=false": ["model.disentangled_encoder=false"], "SASRec": ["model.name=sasrec"]}
    runs = {}
    for name, overrides in variants.items():
        config = Config().with_overrides(base + overrides)
        seed_everything(0)
        model = build_model(config, dataset).train()
        runs[name] = (config, model, make_optimizer(config, model),
                      _common.batch_sampler(dataset.training_examples("prefix"), config.train.batch_size, seed=0),
                      torch.Generator().manual_seed(0))
        train_step(model, runs[name][2], *runs[name][3](), config, generator=runs[name][4])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (config, model, optimizer, batch, generator) in runs.items():
            b = batch()
            start = time.perf_counter()
            train_step(model, optimizer, *b, config, generator=generator)
            times[name].append(time.perf_counter() - start)
    full = statistics.median(times["default"])
    print(f"whole steps (median of {rounds} interleaved rounds):")
    for name, ts in times.items():
        s = statistics.median(ts)
        print(f"  {name:<34} {s:.3f} s/step  ({100 * (full - s) / full:+.0f}% of the default step saved)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=6, help="repeats per timing (medians)")
    p.add_argument("--parts", default="matmuls,block,cl,steps")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    parts = set(args.parts.split(","))

    from dpgdiff.config import Config
    from dpgdiff.models import build_model
    from dpgdiff.training import seed_everything
    from dpgdiff.training.reproducibility import runtime_settings

    _common.set_threads(args.threads)
    base = [f"model.dim={args.dim}", "train.batch_size=512", "loss.ce_impl=full", "train.device=cpu"]
    config = Config().with_overrides(base)
    print(_common.machine())
    with runtime_settings(config, torch.device("cpu")):
        if "matmuls" in parts:
            matmuls(args.dim, args.rounds)
        if "block" in parts:
            block(args.dim, args.rounds)
        if parts & {"cl", "steps"}:
            dataset, source = _common.load_food_kitchen(args.data_dir)
            print(f"data: {source}")
            if "cl" in parts:
                seed_everything(0)
                model = build_model(config, dataset).train()
                tri_cl(model, _common.batch_sampler(dataset.training_examples("prefix"), 512, seed=0)()[0], args.rounds)
            if "steps" in parts:
                steps(dataset, base, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
