"""`resnet-fast experiment degradation`: He et al. 2015, Fig. 6 (left and middle), on any data.

Trains plain-D and resnet-D for every --depths D (default 20 and 56) with one recipe -- by default
the paper's CIFAR-10 recipe: batch 128, lr 0.1 divided by 10 at 50% and 75% of training, weight
decay 1e-4, momentum 0.9, 164 epochs (64k iterations on 50k images) -- each in OUTPUT/<arch>/ as
`resnet-fast train` would, then draws OUTPUT/degradation.png: top-1 training error (thin, dashed,
measured on the fly in train mode) and test error (bold) against iterations, plain nets on the
left, residual nets on the right. The paper's finding: the deeper plain net has the *higher*
training error (degradation), the deeper residual net the lower. OUTPUT/summary.csv lists every
net's final and best errors. --resume continues unfinished runs and reuses finished ones.
"""

import argparse
import csv
import os
from typing import Dict, List

from . import distributed, models, records, run
from .errors import InputError
from .options import add_recipe_options

COLORS = ["tab:orange", "tab:blue", "tab:red", "tab:green", "tab:purple"]


def add_degradation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--depths", type=int, nargs="+", default=[20, 56], help="6n+2 depths (default 20 56)")
    p.add_argument("--output", default=os.path.join("runs", "degradation"), help="experiment folder")
    p.add_argument("--resume", action="store_true", help="continue unfinished runs in OUTPUT, reuse finished ones")
    add_recipe_options(p)
    p.set_defaults(epochs=164)


def _archs(depths: List[int]) -> List[str]:
    return [f"{kind}{d}" for kind in ("plain", "resnet") for d in depths]


def run_degradation(args: argparse.Namespace) -> Dict[str, List[Dict[str, float]]]:
    archs = _archs(args.depths)
    for arch in archs:
        models.check_arch(arch)
    records.require_matplotlib()
    out = args.output
    if not args.resume:
        taken = [p for p in (*archs, "degradation.png", "summary.csv") if os.path.exists(os.path.join(out, p))]
        if taken:
            raise InputError(f"{out} already holds {', '.join(taken)}; pass --resume to continue / reuse them or "
                             f"choose another --output")
    device, created = distributed.setup(args.device)  # one process group for all the runs
    try:
        histories = {}
        for arch in archs:
            one = argparse.Namespace(**vars(args))
            one.arch, one.output, one.resume, one.resume_if_present = arch, os.path.join(out, arch), None, args.resume
            histories[arch] = run.train(one)
        if distributed.is_main():
            plot_degradation(histories, os.path.join(out, "degradation.png"), _caption(args))
            _write_summary(histories, os.path.join(out, "summary.csv"))
            print(f"wrote {os.path.join(out, 'degradation.png')} and {os.path.join(out, 'summary.csv')}")
        return histories
    finally:
        distributed.cleanup(created)


def _caption(args: argparse.Namespace) -> str:
    if args.data[0] == "synthetic":
        data = (f"synthetic, NOT CIFAR-10 ({args.train_size or 2048} train / {args.val_size or 512} test images, "
                f"{args.image_size or 32}x{args.image_size or 32}, noise {args.synthetic_noise})")
    else:
        data = " ".join(args.data) + (f" ({args.train_size} train images)" if args.train_size else "")
    return (f"data: {data}; {args.epochs} epochs, batch {args.batch_size}, lr {args.lr} ({args.schedule}), "
            f"wd {args.weight_decay}, seed {args.seed}")


def _write_summary(histories: Dict[str, List[Dict[str, float]]], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "epochs", "iterations", "final_train_error", "final_test_error", "best_test_error"])
        for arch, h in histories.items():
            w.writerow([arch, int(h[-1]["epoch"]), int(h[-1]["iteration"]), f"{100 - h[-1]['train_top1']:.2f}",
                        f"{100 - h[-1]['val_top1']:.2f}", f"{100 - max(r['val_top1'] for r in h):.2f}"])


def plot_degradation(histories: Dict[str, List[Dict[str, float]]], path: str, caption: str) -> None:
    plt = records.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    top = 0.0
    for ax, kind, title in ((axes[0], "plain", "plain networks"), (axes[1], "resnet", "residual networks")):
        nets = sorted((a for a in histories if a.startswith(kind) and a[len(kind):].isdigit()),
                      key=lambda a: int(a[len(kind):]))
        for color, arch in zip(COLORS, nets):
            h = histories[arch]
            its = [r["iteration"] for r in h]
            train_err, test_err = [100 - r["train_top1"] for r in h], [100 - r["val_top1"] for r in h]
            top = max(top, *train_err, *test_err)
            label = f"{kind}-{arch[len(kind):]}"
            ax.plot(its, train_err, "--", color=color, lw=1, label=f"{label} train")
            ax.plot(its, test_err, "-", color=color, lw=2.5, label=f"{label} test")
        ax.set(title=title, xlabel="iterations")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("top-1 error (%)")
    axes[0].set_ylim(0, min(100.0, top * 1.05 + 1))
    fig.suptitle(caption, fontsize=9)
    records.save_figure(fig, path, dpi=110)
