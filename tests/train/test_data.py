"""The training command's data sources on small files in the real formats (resnet_fast/train/data.py)."""

import os

import numpy as np
import pytest
import torch
from conftest import CIFAR_PER_BATCH, write_cifar10, write_imagefolder

from resnet_fast.train import data
from resnet_fast.train.errors import InputError


def cifar_reference(row: np.ndarray) -> torch.Tensor:
    """A CIFAR-10 row (1024 R, 1024 G, 1024 B values, row-major 32x32) -> the normalized 3x32x32 image."""
    img = torch.from_numpy(row.astype(np.float32) / 255).view(3, 32, 32)
    mean, std = torch.tensor(data.CIFAR_MEAN), torch.tensor(data.CIFAR_STD)
    return (img - mean[:, None, None]) / std[:, None, None]


@pytest.mark.parametrize("point_at_batches_folder", [False, True])
def test_cifar10_reads_torchvisions_format(tmp_path, cifar_checksums_off, point_at_batches_folder):
    written = write_cifar10(str(tmp_path))
    path = str(tmp_path / "cifar-10-batches-py") if point_at_batches_folder else str(tmp_path)
    train, val, k = data.build_datasets(["cifar10", path], 32, None, None, None, seed=0)
    assert (len(train), len(val), k) == (5 * CIFAR_PER_BATCH, CIFAR_PER_BATCH, 10)
    test_rows, test_labels = written["test_batch"]
    for i in (0, 7):  # val: no augmentation, so pixel for pixel
        x, y = val[i]
        assert y == test_labels[i]
        torch.testing.assert_close(x, cifar_reference(test_rows[i]), rtol=0, atol=1e-6)
    train_labels = [lab for b in range(1, 6) for lab in written[f"data_batch_{b}"][1]]
    x, y = train[13]  # train: random crop (4-pixel padding) and flip, labels in file order
    assert x.shape == (3, 32, 32) and y == train_labels[13]


def test_cifar10_subset_is_evenly_spaced(tmp_path, cifar_checksums_off):
    written = write_cifar10(str(tmp_path))
    _, val, _ = data.build_datasets(["cifar10", str(tmp_path)], 32, None, None, 5, seed=0)
    assert len(val) == 5 and [val[i][1] for i in range(5)] == written["test_batch"][1][::2]


def test_cifar10_bad_folders(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        data.build_datasets(["cifar10", str(tmp_path / "nowhere")], 32, None, None, None, seed=0)
    write_cifar10(str(tmp_path))
    with pytest.raises(InputError, match="checksum|not readable as torchvision"):  # md5 sums are checked
        data.build_datasets(["cifar10", str(tmp_path)], 32, None, None, None, seed=0)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(InputError, match="missing data_batch_3"):
        data.build_datasets(["cifar10", str(tmp_path)], 32, None, None, None, seed=0)
    with pytest.raises(InputError, match="32x32"):
        data.build_datasets(["cifar10", str(tmp_path)], 16, None, None, None, seed=0)


def test_cifar10_malformed_pickle(tmp_path, cifar_checksums_off):
    write_cifar10(str(tmp_path))
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="malformed"):
        data.build_datasets(["cifar10", str(tmp_path)], 32, None, None, None, seed=0)


def test_imagefolder_reads_png_and_jpeg(tmp_path):
    write_imagefolder(str(tmp_path))
    train, val, k = data.build_datasets(["imagefolder", str(tmp_path)], 8, None, None, None, seed=0)
    assert (len(train), len(val), k) == (12, 6, 3)
    assert train.classes == ["cat", "dog", "emu"]
    for ds in (train, val):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert [val[i][1] for i in range(6)] == [0, 0, 1, 1, 2, 2]
    assert val[1][0].equal(val[1][0])  # val transform is deterministic


def test_imagefolder_malformed(tmp_path):
    root = tmp_path / "root"
    with pytest.raises(InputError, match="does not exist"):
        data.build_datasets(["imagefolder", str(root)], 8, None, None, None, seed=0)
    (root / "train").mkdir(parents=True)
    with pytest.raises(InputError, match="no val/ folder"):
        data.build_datasets(["imagefolder", str(root)], 8, None, None, None, seed=0)
    (root / "val").mkdir()
    with pytest.raises(InputError, match="class folder"):
        data.build_datasets(["imagefolder", str(root)], 8, None, None, None, seed=0)
    write_imagefolder(str(root))
    (root / "val" / "emu" / "0.png").rename(root / "val" / "emu" / "0.txt")
    (root / "val" / "emu" / "1.jpg").unlink()
    with pytest.raises(InputError, match="no valid file for the classes emu"):
        data.build_datasets(["imagefolder", str(root)], 8, None, None, None, seed=0)
    (root / "val" / "emu").rename(root / "val" / "owl")
    (root / "val" / "owl" / "0.txt").rename(root / "val" / "owl" / "0.png")
    with pytest.raises(InputError, match="different class folders"):
        data.build_datasets(["imagefolder", str(root)], 8, None, None, None, seed=0)
    (root / "val" / "owl").rename(root / "val" / "emu")
    (root / "train" / "cat" / "0.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(InputError, match=r"cannot read image .*cat.0\.png"):
        data.build_datasets(["imagefolder", str(root)], 8, None, None, None, seed=0)


def test_synthetic_is_a_function_of_the_index():
    train, val, k = data.build_datasets(["synthetic"], 12, None, 40, 20, seed=3)
    again, _, _ = data.build_datasets(["synthetic"], 12, None, 40, 20, seed=3)
    other, _, _ = data.build_datasets(["synthetic"], 12, None, 40, 20, seed=4)
    assert (len(train), len(val), k) == (40, 20, 10)
    x, y = train[17]
    assert x.shape == (3, 12, 12) and y == 7
    assert x.equal(again[17][0]) and not x.equal(other[17][0]) and not x.equal(val[17][0])
    assert sorted(train[i][1] for i in range(40)) == sorted(list(range(10)) * 4)
    with pytest.raises(IndexError):
        train[40]
    with pytest.raises(InputError, match="takes no path"):
        data.build_datasets(["synthetic", "x"], 12, None, 40, 20, seed=3)
    with pytest.raises(InputError, match="unknown --data"):
        data.build_datasets(["mnist", "x"], 12, None, 40, 20, seed=3)
