"""Checkpoints: everything needed to continue a run as if it had never stopped.

One file, OUTPUT/checkpoint.pt, rewritten atomically (temporary file + os.replace) after every epoch
by rank 0: model, optimizer, LR scheduler, fp16 grad scaler, completed epochs, the metric history,
the settings it was trained with, and every process's RNG states (torch CPU and CUDA, Python, NumPy).
It holds tensors, numbers, strings and containers only, so it loads with torch.load(weights_only=True).
Epoch e's data order and worker seeds derive from (seed, e, rank) (data.Loaders.set_epoch), so
restoring these states reproduces an uninterrupted run's batches and, on CPU, its numbers exactly.
"""

import os
import random
from typing import Any, Dict, List

import numpy as np
import torch

from .errors import InputError

FORMAT = "resnet_fast.train/1"


def capture_rng() -> Dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}


def restore_rng(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def save(path: str, state: Dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    torch.save(dict(state, format=FORMAT), tmp)
    os.replace(tmp, path)


def load(path: str, arch: str, num_classes: int) -> Dict[str, Any]:
    """The checkpoint at `path`, checked against the run it is to continue (InputError otherwise)."""
    if not os.path.isfile(path):
        raise InputError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, another format, or pickled objects outside weights_only
        raise InputError(f"checkpoint {path} is not readable: {type(e).__name__}: {str(e)[:300]}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path} is not a resnet-fast training checkpoint (format {FORMAT})")
    if state["arch"] != arch:
        raise InputError(f"checkpoint {path} was trained as --arch {state['arch']}, not --arch {arch}")
    if state["num_classes"] != num_classes:
        raise InputError(f"checkpoint {path} has {state['num_classes']} classes; the data has {num_classes}")
    return state


def apply(state: Dict[str, Any], path: str, model, optimizer, scheduler, scaler) -> None:
    """Loads the model / optimizer / scheduler / scaler states (in memory only; InputError on a mismatch)."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise InputError(f"checkpoint {path} does not fit this model: {str(e)[:500]}") from e
    scheduler.load_state_dict(state["scheduler"])
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])


RECIPE_KEYS = ("epochs", "batch_size", "lr", "schedule", "lr_steps", "warmup_epochs", "weight_decay", "momentum",
               "amp", "seed", "data", "image_size", "train_size", "val_size", "synthetic_noise")


def changed_settings(saved: Dict[str, Any], now: Dict[str, Any]) -> List[str]:
    """'key: old -> new' for every training setting that differs from the checkpoint's."""
    return [f"{k}: {saved.get(k)} -> {now.get(k)}" for k in RECIPE_KEYS if saved.get(k) != now.get(k)]
