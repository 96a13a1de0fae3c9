"""The command-line options `train` and `experiment` share (everything but --arch): one definition,
imported by cli.py and experiment.py alike."""

import argparse


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    """The options `train` and `experiment` share (everything but --arch)."""
    d = p.add_argument_group("data")
    d.add_argument("--data", nargs="+", default=["synthetic"], metavar="SOURCE",
                   help="synthetic (default, no files) | cifar10 PATH | imagefolder PATH (PATH/train, PATH/val)")
    d.add_argument("--download", action="store_true", help="cifar10: download CIFAR-10 into PATH if it is missing")
    d.add_argument("--image-size", type=int, default=None,
                   help="synthetic / imagefolder image side (default 32 for CIFAR-style nets and cifar10, else 224)")
    d.add_argument("--num-classes", type=int, default=None, help="synthetic: number of classes (default 10)")
    d.add_argument("--train-size", type=int, default=None,
                   help="synthetic: images (default 2048); cifar10 / imagefolder: an evenly spaced subset")
    d.add_argument("--val-size", type=int, default=None, help="likewise for the val set (synthetic default 512)")
    d.add_argument("--synthetic-noise", type=float, default=1.0, help="synthetic: pixel noise std (signal std 1)")
    d.add_argument("--workers", type=int, default=4, help="data-loading worker processes per process (0: none)")
    o = p.add_argument_group("optimization")
    o.add_argument("--epochs", type=int, default=90)
    o.add_argument("--batch-size", type=int, default=128, help="per process")
    o.add_argument("--lr", type=float, default=0.1, help="initial learning rate (not scaled by process count)")
    o.add_argument("--schedule", default="step", help="step (divide by 10 at --lr-steps) | cosine")
    o.add_argument("--lr-steps", type=float, nargs="+", default=None, metavar="EPOCH",
                   help="epochs at which step divides the lr by 10 (default: 50%% and 75%% of --epochs)")
    o.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warm-up (either schedule)")
    o.add_argument("--momentum", type=float, default=0.9)
    o.add_argument("--weight-decay", type=float, default=1e-4)
    o.add_argument("--seed", type=int, default=0)
    r = p.add_argument_group("execution")
    r.add_argument("--backend", default="fast", help="fast (resnet_fast) | torchvision (eager, same model)")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda")
    r.add_argument("--amp", default=None, help="bf16 | fp16 | off (default: bf16 on CUDA, off on CPU)")
    r.add_argument("--channels-last", action="store_true", help="model and inputs in channels_last")
    r.add_argument("--compile", action="store_true", help="torch.compile the model")
    r.add_argument("--sync-bn", action="store_true", help="BatchNorm statistics over all processes (torchrun)")
    r.add_argument("--plot", action="store_true", help="also write a PNG of the loss / error curves")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
