"""The training command's data: `synthetic` (embedded), `cifar10 PATH`, `imagefolder PATH`.

Every source gives a (train, val) pair of map-style datasets of (3 x S x S float tensor, int label)
and the number of classes. Folders are checked before anything is trained or written, and a
problem is reported as an InputError naming the path and what is wrong with it.

* synthetic: images generated from their index (identical on every machine, no files): class k's
  smooth random pattern (a 4x4 grid of N(0,1) per channel, bicubic-upsampled to S x S, standardized),
  cyclically shifted by up to S/4 pixels, flipped at random, scaled by a contrast in [0.5, 1.5],
  plus N(0, noise^2) pixel noise. Train and val draw different images of the same classes.
* cifar10: torchvision.datasets.CIFAR10(PATH, download=--download) -- PATH holds (or receives)
  `cifar-10-batches-py/`; the paper's augmentation (4-pixel zero padding, random 32x32 crop,
  horizontal flip), per-channel normalization.
* imagefolder: PATH/train/<class>/<image> and PATH/val/<class>/<image> (torchvision.datasets
  .ImageFolder); train: RandomResizedCrop(S) + flip, val: Resize(S*256/224) + CenterCrop(S); the
  ImageNet mean/std normalization.
"""

import os
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from .errors import InputError

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
               "batches.meta"]


class SyntheticImages(Dataset):
    """`size` images of `num_classes` classes, a pure function of (seed, split, index): see the module doc."""

    def __init__(self, size: int, num_classes: int, image_size: int, seed: int = 0, split: int = 0,
                 noise: float = 1.0):
        g = torch.Generator().manual_seed(seed)
        self.coarse = torch.randn(num_classes, 3, 4, 4, generator=g)  # (K, 3, 4, 4), shared by the splits
        self.size, self.num_classes, self.image_size, self.noise = size, num_classes, image_size, noise
        self.base_seed = (seed * 1_000_003 + split * 1_000_000_007) % (2 ** 62)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} synthetic images")
        s, label = self.image_size, index % self.num_classes
        g = torch.Generator().manual_seed(self.base_seed + index)
        t = F.interpolate(self.coarse[label:label + 1], size=(s, s), mode="bicubic", align_corners=False)[0]
        t = (t - t.mean()) / t.std()
        dy, dx = (int(v) for v in torch.randint(-(s // 4), s // 4 + 1, (2,), generator=g))
        t = torch.roll(t, shifts=(dy, dx), dims=(1, 2))
        if float(torch.rand((), generator=g)) < 0.5:
            t = t.flip(2)
        contrast = 0.5 + torch.rand((), generator=g)
        return contrast * t + self.noise * torch.randn(3, s, s, generator=g), label


def _pil_rgb(path: str):
    """torchvision's loader, with the file named when it is not a readable image."""
    from PIL import Image
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
        raise InputError(f"cannot read image {path}: {e}") from e


def _cifar10(path: str, download: bool):
    from torchvision import datasets, transforms
    root = os.path.dirname(path.rstrip("/")) if os.path.basename(path.rstrip("/")) == "cifar-10-batches-py" else path
    folder = os.path.join(root, "cifar-10-batches-py")
    if not download:
        if not os.path.isdir(root):
            raise InputError(f"CIFAR-10 folder {path} does not exist (pass --download to fetch CIFAR-10 into it)")
        missing = [f for f in CIFAR_FILES if not os.path.isfile(os.path.join(folder, f))]
        if missing:
            raise InputError(f"CIFAR-10 at {folder} is missing {', '.join(missing)}: expected the python version "
                             f"(cifar-10-python.tar.gz extracted), or pass --download")
    norm = transforms.Normalize(CIFAR_MEAN, CIFAR_STD)
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), norm])
    val_tf = transforms.Compose([transforms.ToTensor(), norm])
    try:
        train = datasets.CIFAR10(root, train=True, transform=train_tf, download=download)
        val = datasets.CIFAR10(root, train=False, transform=val_tf, download=False)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted" (a checksum differs)
        raise InputError(f"CIFAR-10 at {folder} is not readable as torchvision's CIFAR-10: {e}") from e
    except Exception as e:  # a file that is not a CIFAR-10 pickle: UnpicklingError, EOFError, KeyError, ...
        raise InputError(f"CIFAR-10 at {folder} is malformed: {type(e).__name__}: {e}") from e
    return train, val, 10


def _imagefolder(path: str, image_size: int):
    from torchvision import datasets, transforms
    if not os.path.isdir(path):
        raise InputError(f"ImageFolder root {path} does not exist or is not a folder")
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(path, split)):
            raise InputError(f"ImageFolder root {path} has no {split}/ folder "
                             f"(expected {path}/{split}/<class>/<image>)")
    norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), norm])
    val_tf = transforms.Compose([transforms.Resize(round(image_size * 256 / 224)), transforms.CenterCrop(image_size),
                                 transforms.ToTensor(), norm])
    sets = []
    for split, tf in (("train", train_tf), ("val", val_tf)):
        try:
            sets.append(datasets.ImageFolder(os.path.join(path, split), transform=tf, loader=_pil_rgb))
        except FileNotFoundError as e:
            raise InputError(f"ImageFolder {os.path.join(path, split)}: {e}") from e
    train, val = sets
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise InputError(f"ImageFolder {path}: train/ and val/ have different class folders "
                         f"(only in train: {only_train}; only in val: {only_val})")
    return train, val, len(train.classes)


def _even_subset(ds: Dataset, n: Optional[int], name: str) -> Dataset:
    """n evenly spaced items of ds (all of it when n is None)."""
    total = len(ds)
    if n is None or n == total:
        return ds
    if n > total:
        raise InputError(f"{name} {n} exceeds the {total} images available")
    return Subset(ds, [i * total // n for i in range(n)])


def build_datasets(source: List[str], image_size: int, num_classes: Optional[int], train_size: Optional[int],
                   val_size: Optional[int], seed: int, noise: float = 1.0, download: bool = False):
    """(train, val, num_classes) for --data `source` (["synthetic"], ["cifar10", PATH], ["imagefolder", PATH])."""
    kind, rest = source[0], source[1:]
    if kind == "synthetic":
        if rest:
            raise InputError(f"--data synthetic takes no path, got {rest}")
        k = num_classes or 10
        return (SyntheticImages(train_size or 2048, k, image_size, seed, 0, noise),
                SyntheticImages(val_size or 512, k, image_size, seed, 1, noise), k)
    if kind not in ("cifar10", "imagefolder"):
        raise InputError(f"unknown --data {kind!r}: use synthetic, cifar10 PATH or imagefolder PATH")
    if len(rest) != 1:
        raise InputError(f"--data {kind} needs exactly one PATH, got {len(rest)} arguments")
    if kind == "cifar10":
        if image_size != 32:
            raise InputError(f"CIFAR-10 images are 32x32; got --image-size {image_size}")
        train, val, k = _cifar10(rest[0], download)
    else:
        train, val, k = _imagefolder(rest[0], image_size)
    if num_classes is not None and num_classes != k:
        raise InputError(f"--num-classes {num_classes} differs from the {k} classes of {rest[0]}")
    train, val = _even_subset(train, train_size, "--train-size"), _even_subset(val, val_size, "--val-size")
    for name, ds in (("train", train), ("val", val)):
        if len(ds) == 0:
            raise InputError(f"the {name} split of {rest[0]} has no images")
        ds[0]  # reads and transforms one image now: an unreadable format fails before training starts
    return train, val, k


class ShardSampler(Sampler):
    """Evaluation indices of one process: rank, rank + world, ... (every image exactly once over all
    ranks, no padding, so all-reduced sums give exact metrics)."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class Loaders(NamedTuple):
    train: DataLoader
    val: DataLoader
    sampler: DistributedSampler
    generator: torch.Generator  # seeds the workers' RNGs; reseeded every epoch by set_epoch

    def set_epoch(self, epoch: int, seed: int, rank: int) -> None:
        """Epoch e's shuffle and worker seeds depend on (seed, e, rank) only, so a resumed run reads
        the same batches in the same order as an uninterrupted one."""
        self.sampler.set_epoch(epoch)
        self.generator.manual_seed((seed * 1_000_003 + epoch * 10_007 + rank) % (2 ** 62))


def make_loaders(train: Dataset, val: Dataset, batch_size: int, workers: int, seed: int, rank: int, world: int,
                 pin_memory: bool) -> Loaders:
    """Training: a DistributedSampler (also for one process) over whole batches; evaluation: a shard
    of the val set per rank. Workers are not persistent: each epoch starts them from that epoch's seeds."""
    if len(train) < batch_size * world:
        raise InputError(f"the train split has {len(train)} images, fewer than one batch of --batch-size "
                         f"{batch_size} x {world} process(es)")
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    gen = torch.Generator()
    common = {"num_workers": workers, "pin_memory": pin_memory}
    train_loader = DataLoader(train, batch_size, sampler=sampler, drop_last=True, generator=gen, **common)
    val_loader = DataLoader(val, batch_size, sampler=ShardSampler(len(val), rank, world), **common)
    return Loaders(train_loader, val_loader, sampler, gen)
