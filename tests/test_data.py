import pickle

import numpy as np
import pytest
import torch

from blockdrop_env import data
from blockdrop_env.data import CifarFormatError, find_dataset, load_cifar, random_crop_flip

from .conftest import PER_BATCH, requires_real_data, write_cifar10


def test_reads_synthetic_layout_in_order(synthetic_dir):
    images, labels = load_cifar("trainval", synthetic_dir)
    assert images.shape == (5 * PER_BATCH, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (5 * PER_BATCH,) and labels.dtype == torch.int64
    with open(synthetic_dir / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    # Row layout: 1024 R, 1024 G, 1024 B values, each 32x32 row-major.
    first = images[PER_BATCH]
    assert torch.equal(first[1].flatten(), torch.from_numpy(batch["data"][0, 1024:2048]))
    assert labels[PER_BATCH : 2 * PER_BATCH].tolist() == batch["labels"]
    test_images, _ = load_cifar("test", synthetic_dir)
    assert len(test_images) == PER_BATCH


def test_reads_cifar100_layout(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(1)
    for name in ("train", "test"):
        with open(root / name, "wb") as f:
            pickle.dump(
                {
                    "data": rng.integers(0, 256, (6, 3072), dtype=np.uint8),
                    "fine_labels": [0, 99, 5, 6, 7, 8],
                    "coarse_labels": [0] * 6,
                },
                f,
            )
    images, labels = load_cifar("test", tmp_path, dataset="cifar100")
    assert images.shape == (6, 3, 32, 32) and labels.tolist() == [0, 99, 5, 6, 7, 8]


def test_explicit_dir_may_be_the_batch_folder_itself(synthetic_dir):
    assert find_dataset("cifar10", synthetic_dir / "cifar-10-batches-py") == synthetic_dir / "cifar-10-batches-py"


def test_env_var_is_used(synthetic_dir, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(synthetic_dir))
    assert find_dataset() == synthetic_dir / "cifar-10-batches-py"


def test_missing_data_lists_every_place_tried(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(data, "default_data_dirs", lambda: [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(FileNotFoundError) as err:
        find_dataset()
    message = str(err.value)
    for place in ("a", "b"):
        assert str(tmp_path / place / "cifar-10-batches-py") in message
    assert "BLOCKDROP_DATA_DIR" in message and "download=True" in message


def test_a_missing_batch_file_is_named(tmp_path):
    import shutil

    from .conftest import write_cifar10

    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py \(lacks data_batch_3\)"):
        find_dataset(data_dir=tmp_path)
    shutil.rmtree(folder)  # nothing there at all: the folder alone is listed
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py\n"):
        find_dataset(data_dir=tmp_path)


@pytest.mark.parametrize(
    "corruption, match",
    [
        ("truncate", "not a readable CIFAR pickle"),
        ("shape", r"shape \(N, 3072\)"),
        ("labels", r"labels must lie in \[0, 10\)"),
        ("count", "batches.meta says"),
        ("label_count", "one integer label per image"),
    ],
)
def test_corrupt_files_give_clear_errors(tmp_path, corruption, match):
    root = write_cifar10(tmp_path, seed=3)
    path = root / "data_batch_3"
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    if corruption == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        if corruption == "shape":
            batch["data"] = batch["data"][:, :3000]
        elif corruption == "labels":
            batch["labels"][0] = 10
        elif corruption == "count":
            batch["data"], batch["labels"] = batch["data"][:-1], batch["labels"][:-1]
        elif corruption == "label_count":
            batch["labels"] = batch["labels"][:-1]
        with open(path, "wb") as f:
            pickle.dump(batch, f)
    with pytest.raises(CifarFormatError, match=match) as err:
        load_cifar("train", tmp_path)
    assert "data_batch_3" in str(err.value)


def test_bad_split_is_refused(synthetic_dir):
    with pytest.raises(ValueError, match="split must be one of"):
        load_cifar("valid", synthetic_dir)


def test_random_crop_flip_is_a_shifted_maybe_flipped_window():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = random_crop_flip(images, torch.Generator().manual_seed(0))
    again = random_crop_flip(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, again) and out.dtype == torch.uint8 and out.shape == images.shape
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    flips = shifts = 0
    for i in range(len(images)):  # reference by brute force: some window of the padded image
        windows = {
            (dy, dx, f)
            for dy in range(9)
            for dx in range(9)
            for f in (False, True)
            if torch.equal(out[i], (lambda w: w.flip(-1) if f else w)(padded[i, :, dy : dy + 32, dx : dx + 32]))
        }
        assert windows, f"image {i} is not a crop of its padded original"
        flips += any(f for _, _, f in windows)
        shifts += any((dy, dx) != (4, 4) for dy, dx, _ in windows)
    assert 16 < flips < 48 and shifts > 48


def test_train_and_val_split_the_train_files_at_the_last_tenth(synthetic_dir):
    images, labels = load_cifar("trainval", synthetic_dir)
    train_x, train_y = load_cifar("train", synthetic_dir)
    val_x, val_y = load_cifar("val", synthetic_dir)
    cut = len(labels) - len(labels) // 10
    assert len(val_y) == len(labels) // 10 and len(train_y) == cut
    assert torch.equal(torch.cat([train_x, val_x]), images) and torch.equal(torch.cat([train_y, val_y]), labels)
    assert train_x.untyped_storage().nbytes() == train_x.numel()  # a copy, not a view of all 50,000


def test_a_crafted_pickle_runs_no_code(tmp_path):
    root = write_cifar10(tmp_path, seed=4)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": Evil()}, f)
    with pytest.raises(CifarFormatError, match="refused to load"):
        load_cifar("test", tmp_path)
    assert not marker.exists()


def test_default_search_skips_folders_of_other_users(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    mine.mkdir(), theirs.mkdir()
    monkeypatch.setattr(data, "default_data_dirs", lambda: [theirs, mine])
    monkeypatch.setattr(data, "_owned", lambda folder: folder == mine)
    assert data.candidate_dirs() == [mine]
    assert data.candidate_dirs(theirs) == [theirs]  # a folder the user names is searched


@requires_real_data
def test_real_cifar10_class_counts_and_order():
    train_x, train_y = load_cifar("trainval")
    test_x, test_y = load_cifar("test")
    assert train_x.shape == (50_000, 3, 32, 32) and test_x.shape == (10_000, 3, 32, 32)
    assert torch.bincount(train_y).tolist() == [5000] * 10
    assert torch.bincount(test_y).tolist() == [1000] * 10
    assert train_y[:20].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3, 4, 7, 7, 2, 9, 9, 9, 3, 2, 6]
    assert test_y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    # Pixel values at known positions (SOURCE.md): first R values of train row 0.
    assert train_x[0, 0, 0, :3].tolist() == [59, 43, 50]
    val_y = load_cifar("val")[1]
    assert torch.equal(val_y, train_y[45_000:]) and len(load_cifar("train")[1]) == 45_000
