"""The training run behind `resnet-fast train`: validate, build, (resume,) train, evaluate, record.

Order matters for the "nothing overwritten on bad input" rule: every check that can fail on user
input (arguments, arch, data folder, checkpoint and its fit to the model, output folder) runs on
every process before anything is written; only then does rank 0 create OUTPUT and, after each
epoch, rewrite OUTPUT/checkpoint.pt, OUTPUT/metrics.csv and (with --plot) OUTPUT/curves.png.
"""

import argparse
import os
import random
import sys
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint, data, distributed, engine, models, records
from .errors import InputError
from .progress import Progress

OUTPUT_FILES = ("checkpoint.pt", "metrics.csv", "curves.png")
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


def _check_numbers(args: argparse.Namespace) -> None:
    rules = [("--epochs", args.epochs, args.epochs >= 1), ("--batch-size", args.batch_size, args.batch_size >= 1),
             ("--lr", args.lr, args.lr > 0), ("--weight-decay", args.weight_decay, args.weight_decay >= 0),
             ("--momentum", args.momentum, 0 <= args.momentum < 1), ("--workers", args.workers, args.workers >= 0),
             ("--warmup-epochs", args.warmup_epochs, 0 <= args.warmup_epochs < args.epochs)]
    rules += [(f"--{k.replace('_', '-')}", v, v is None or v >= 1)
              for k, v in (("image_size", args.image_size), ("num_classes", args.num_classes),
                           ("train_size", args.train_size), ("val_size", args.val_size))]
    rules += [("--lr-steps", m, m > 0) for m in (args.lr_steps or [])]
    for name, value, ok in rules:
        if not ok:
            raise InputError(f"{name} {value} is out of range")
    if args.amp not in (None, *AMP):
        raise InputError(f"unknown --amp {args.amp!r}: use bf16, fp16 or off")
    if args.schedule not in ("step", "cosine"):
        raise InputError(f"unknown --schedule {args.schedule!r}: use step or cosine")


def _resume_path(args: argparse.Namespace, out: str) -> Optional[str]:
    """The checkpoint to continue from, or None; refuses to overwrite another run's files in OUTPUT."""
    own = os.path.join(out, "checkpoint.pt")
    if args.resume is True:
        path = own
    elif args.resume:
        path = os.path.join(args.resume, "checkpoint.pt") if os.path.isdir(args.resume) else args.resume
    else:
        path = own if getattr(args, "resume_if_present", False) and os.path.isfile(own) else None
    existing = [f for f in OUTPUT_FILES if os.path.exists(os.path.join(out, f))]
    if existing and (path is None or os.path.abspath(path) != os.path.abspath(own)):
        raise InputError(f"{out} already holds a run ({', '.join(existing)}); pass --resume to continue it or "
                         f"choose another --output")
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"--output {out} exists and is not a folder")
    return path


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _say(*parts: Any) -> None:
    if distributed.is_main():
        print(*parts, flush=True)


def train(args: argparse.Namespace) -> List[Dict[str, float]]:
    """Runs (or continues) training as `args` say; returns the per-epoch history."""
    device, created = distributed.setup(args.device)
    try:
        return _train(args, device)
    finally:
        distributed.cleanup(created)


def _train(args: argparse.Namespace, device: torch.device) -> List[Dict[str, float]]:
    rank, world = distributed.rank(), distributed.world_size()
    _check_numbers(args)
    models.check_arch(args.arch)
    amp = args.amp or ("bf16" if device.type == "cuda" else "off")
    if args.plot:
        records.require_matplotlib()
    if args.sync_bn and args.backend == "torchvision" and device.type == "cpu" and world > 1:
        raise InputError("--sync-bn with --backend torchvision needs CUDA (torch's SyncBatchNorm refuses CPU "
                         "tensors); --backend fast synchronizes on CPU too")
    cifar_like = models.is_cifar_arch(args.arch) or args.data[0] == "cifar10"
    image_size = args.image_size or (32 if cifar_like else 224)
    out = args.output or os.path.join("runs", args.arch)
    resume = _resume_path(args, out)
    train_set, val_set, num_classes = data.build_datasets(
        args.data, image_size, args.num_classes, args.train_size, args.val_size, args.seed, args.synthetic_noise,
        args.download)

    _seed_all(args.seed)  # the same initial weights on every rank and for both backends
    model = models.build_model(args.arch, args.backend, num_classes, args.sync_bn).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    loaders = data.make_loaders(train_set, val_set, args.batch_size, args.workers, args.seed, rank, world,
                                pin_memory=device.type == "cuda")
    iters = len(loaders.train)
    steps = args.lr_steps if args.lr_steps is not None else [0.5 * args.epochs, 0.75 * args.epochs]
    factor = engine.lr_lambda(args.schedule, args.epochs, iters, steps, args.warmup_epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    settings = dict(vars(args), image_size=image_size, amp=amp, num_classes=num_classes)

    start, history, rng = 0, [], None
    if resume is not None:
        state = checkpoint.load(resume, args.arch, num_classes)
        checkpoint.apply(state, resume, model, optimizer, scheduler, scaler)
        start, history = state["epoch"], list(state["history"])
        rng = state["rng"][rank] if len(state["rng"]) == world else None
        for group in optimizer.param_groups:  # this invocation's settings win over the saved ones
            group.update(momentum=args.momentum, weight_decay=args.weight_decay)
        scheduler.base_lrs = [args.lr for _ in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = args.lr * factor(scheduler.last_epoch)
        changed = checkpoint.changed_settings(state["settings"], settings)
        _say(f"resuming {resume} after epoch {start}" + (f" with changed settings: {'; '.join(changed)}"
                                                          if changed else ""))
        if start >= args.epochs:
            _say(f"{resume} has already completed {start} of {args.epochs} epochs; nothing to do")
            return history
    distributed.barrier()  # every rank has validated everything before rank 0 writes anything

    if rng is not None:
        checkpoint.restore_rng(rng)
    else:
        _seed_all(args.seed + 1 + rank)  # each rank its own augmentation stream
    runner = model
    if world > 1:
        runner = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        runner = torch.compile(runner)
    if distributed.is_main():
        os.makedirs(out, exist_ok=True)
    _say(f"resnet-fast train: {args.arch} ({args.backend} backend{', SyncBN' if args.sync_bn else ''}) on "
         f"{device}, {world} process(es), amp {amp}; data {' '.join(args.data)}: {len(train_set)} train / "
         f"{len(val_set)} val images, {num_classes} classes, {image_size}x{image_size}; {iters} iterations/epoch "
         f"of {args.batch_size} x {world}; output {out}")

    for epoch in range(start, args.epochs):
        loaders.set_epoch(epoch, args.seed, rank)
        progress = Progress(iters, f"epoch {epoch + 1}/{args.epochs}", enabled=distributed.is_main() and args.progress)
        row: Dict[str, float] = {"epoch": epoch + 1, "iteration": (epoch + 1) * iters}
        row.update(engine.train_one_epoch(runner, loaders.train, optimizer, scheduler, scaler, device, AMP[amp],
                                          args.channels_last, progress))
        row["lr"] = optimizer.param_groups[0]["lr"]
        distributed.broadcast_buffers(model)
        row.update(engine.evaluate(runner, loaders.val, device, AMP[amp], args.channels_last))
        history.append(row)
        rngs = distributed.all_gather_object(checkpoint.capture_rng())
        if distributed.is_main():
            checkpoint.save(os.path.join(out, "checkpoint.pt"), {
                "arch": args.arch, "num_classes": num_classes, "epoch": epoch + 1, "history": history,
                "settings": settings, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "rng": rngs})
            records.write_csv(history, os.path.join(out, "metrics.csv"))
            if args.plot:
                records.plot_curves(history, os.path.join(out, "curves.png"), f"{args.arch} ({' '.join(args.data)})")
        _say(f"epoch {epoch + 1}/{args.epochs}: train loss {row['train_loss']:.4f} top-1 {row['train_top1']:.2f}% | "
             f"val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.2f}% top-5 {row['val_top5']:.2f}% | "
             f"{row['images_per_s']:,.0f} img/s, {row['epoch_seconds']:.1f} s")
    sys.stdout.flush()
    return history
