"""Per-epoch records: OUTPUT/metrics.csv (one row per epoch) and, with --plot, OUTPUT/curves.png.

Both are rewritten whole from the checkpoint's history after every epoch, so they always agree with
the checkpoint, also after a resume. Columns: epoch, iteration (cumulative optimizer steps), lr (at
the epoch's end), train_loss, train_top1 (%, on the fly in train mode), val_loss, val_top1, val_top5
(%), images_per_s (all processes), epoch_seconds.
"""

import csv
import os
from typing import Dict, List

COLUMNS = ["epoch", "iteration", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
           "images_per_s", "epoch_seconds"]


def write_csv(history: List[Dict[str, float]], path: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow(row)
    os.replace(tmp, path)


def require_matplotlib() -> None:
    """Checked before training starts, so --plot without matplotlib fails at once, not after an epoch."""
    from .errors import InputError
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise InputError("--plot needs matplotlib: pip install matplotlib (or resnet_fast[plot])") from e


def pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    return plt


def plot_curves(history: List[Dict[str, float]], path: str, title: str) -> None:
    """Loss and top-1 error (%) against epoch, train (dashed) and val (solid)."""
    plt = pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "--", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "-", lw=2, label="val")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_err.plot(epochs, [100 - r["train_top1"] for r in history], "--", label="train")
    ax_err.plot(epochs, [100 - r["val_top1"] for r in history], "-", lw=2, label="val")
    ax_err.set(xlabel="epoch", ylabel="top-1 error (%)", title="top-1 error")
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    save_figure(fig, path, dpi=100)


def save_figure(fig, path: str, dpi: int) -> None:
    """Writes fig to path atomically (a reader never sees half a PNG) and closes it."""
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=dpi)
    pyplot().close(fig)
    os.replace(tmp, path)
