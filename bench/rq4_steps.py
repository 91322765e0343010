"""RQ4 (the paper's Figure 4): test NDCG@10 and HR@10 against the number of reverse steps K, for several checkpoints.

    python bench/rq4_steps.py --checkpoint DPG-Diff=runs/dpg/best.pt --checkpoint DiffuRec=runs/diffurec/best.pt \
        --infer-steps 1,2,4,8,16,32 --out-dir rq4/

Every checkpoint is evaluated by the shared evaluator on the saved candidates of the dataset it was trained
on, with its own sampler unless --sampler is given. Writes rq4.md (the table), rq4.json and rq4.png (a 2x2
grid: domain X / Y by NDCG@10 / HR@10, one line per checkpoint). K values above a model's T are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

METRICS = (("ndcg10", "NDCG@10"), ("hr10", "HR@10"))


def parse_checkpoint(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    return (label, Path(path)) if sep else (Path(text).parent.name or text, Path(text))


def evaluate_checkpoint(path: Path, steps: list[int], sampler: str | None, which: str, data_dir: str | None) -> dict:
    from dpgdiff.training import evaluate_model, load_model_and_data

    model, config, info, dataset = load_model_and_data(path, data_dir)
    meta = info["dataset"]
    sampler = sampler or config.diffusion.sampler
    rows = {}
    for k in steps:
        if k > config.diffusion.steps:
            print(f"{path}: K={k} > T={config.diffusion.steps}, skipped", file=sys.stderr)
            continue
        start = time.perf_counter()
        result = evaluate_model(model, dataset, which, config, sampler=sampler, infer_steps=k)
        rows[k] = {f"{d}_{m}": float(v) for d, ms in result.per_domain.items() for m, v in ms.items()}
        rows[k]["seconds"] = time.perf_counter() - start
        print(f"{path}: {sampler} K={k}: X NDCG@10 {100 * rows[k]['x_ndcg10']:.2f}, "
              f"Y NDCG@10 {100 * rows[k]['y_ndcg10']:.2f} ({rows[k]['seconds']:.1f} s)", file=sys.stderr)
    return {"model": config.model.name, "sampler": sampler, "T": config.diffusion.steps,
            "dataset": f"{meta['name']} / {meta['split']}", "epoch": info["epoch"], "by_k": rows}


def markdown(results: dict[str, dict], steps: list[int], which: str) -> str:
    labels = list(results)
    head = ["K"] + [f"{label} {d.upper()} {title}" for d in ("x", "y") for _, title in METRICS for label in labels]
    lines = [f"{which} metrics x100 (sampled: 1 + negatives), by reverse steps K; "
             + "; ".join(f"{label}: {r['model']}, {r['sampler']}, T={r['T']}, {r['dataset']}, epoch {r['epoch']}"
                         for label, r in results.items()),
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in steps:
        cells = [str(k)]
        for d in ("x", "y"):
            for m, _ in METRICS:
                for label in labels:
                    row = results[label]["by_k"].get(k)
                    cells.append("-" if row is None else f"{100 * row[f'{d}_{m}']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict], path: Path, which: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 7), sharex=True)
    for i, d in enumerate(("x", "y")):
        for j, (m, title) in enumerate(METRICS):
            ax = axes[i][j]
            for label, r in results.items():
                ks = sorted(r["by_k"])
                ax.plot(ks, [100 * r["by_k"][k][f"{d}_{m}"] for k in ks], marker="o", label=label)
            ax.set_xscale("log", base=2)
            ax.set_title(f"domain {d.upper()}: {title} (x100, {which})")
            ax.set_xlabel("reverse steps K")
            ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", required=True, metavar="[LABEL=]PATH",
                   help="best.pt written by train (repeat for each model)")
    p.add_argument("--infer-steps", default="1,2,4,8,16,32")
    p.add_argument("--sampler", choices=("ddpm", "ddim"), default=None, help="default: each model's config")
    p.add_argument("--which", choices=("test", "valid"), default="test")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out-dir", default="rq4")
    args = p.parse_args()

    from dpgdiff.files import atomic_write_text

    steps = sorted({int(k) for k in args.infer_steps.split(",") if k.strip()})
    results = {}
    for text in args.checkpoint:
        label, path = parse_checkpoint(text)
        results[label] = evaluate_checkpoint(path, steps, args.sampler, args.which, args.data_dir)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(results, steps, args.which)
    atomic_write_text(out / "rq4.md", table)
    atomic_write_text(out / "rq4.json", json.dumps(results, indent=2) + "\n")
    plot(results, out / "rq4.png", args.which)
    print(table)
    print(f"wrote {out / 'rq4.md'}, {out / 'rq4.json'}, {out / 'rq4.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
