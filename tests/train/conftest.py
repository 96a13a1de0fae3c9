import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The training tests run tiny models, where intra-op threads only add contention (on a shared
    2-core machine a step ran 10x slower with 2 threads than with 1); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------
# Small data sets on disk, in the real formats.

import os  # noqa: E402
import pickle  # noqa: E402

import numpy as np  # noqa: E402

CIFAR_PER_BATCH = 10  # images per data_batch_i / test_batch (CIFAR-10 has 10000)
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: str, seed: int = 0) -> dict:
    """root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} as the CIFAR-10 python
    version stores them: pickled dicts with `data` (N, 3072) uint8 rows (1024 R, 1024 G, 1024 B,
    each row-major 32x32), `labels` (list of int), `batch_label`, `filenames`. Returns the arrays."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (CIFAR_PER_BATCH, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, CIFAR_PER_BATCH)]
        entry = {"batch_label": f"{name} of 5", "labels": labels, "data": data,
                 "filenames": [f"img_{name}_{i}.png" for i in range(CIFAR_PER_BATCH)]}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(entry, f)
        written[name] = (data, labels)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": CIFAR_CLASSES, "num_cases_per_batch": CIFAR_PER_BATCH, "num_vis": 3072}, f)
    return written


def write_imagefolder(root: str, classes=("cat", "dog", "emu"), per_class=(4, 2), seed: int = 0) -> None:
    """root/{train,val}/<class>/*.{png,jpg}: tiny RGB images of odd sizes, PNG and JPEG alternating."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), per_class):
        for c in classes:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(n):
                h, w = int(rng.integers(9, 20)), int(rng.integers(9, 20))
                img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                img.save(os.path.join(root, split, c, f"{i}.{'png' if i % 2 == 0 else 'jpg'}"))


@pytest.fixture
def cifar_checksums_off(monkeypatch):
    """torchvision's CIFAR10 checks the real files' md5 sums, which generated files cannot match; this
    makes its integrity check test only that each file exists (everything else is torchvision's code)."""
    import torchvision.datasets.cifar as tv_cifar
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
