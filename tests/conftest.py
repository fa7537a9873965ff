"""Shared fixtures: small synthetic CIFAR folders and a randomly initialised ResNet-32 checkpoint,
so most tests run without the real data; tests that need realism use the real copy when present."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from blockdrop_env.checkpoint import save_resnet
from blockdrop_env.data import find_dataset
from blockdrop_env.resnet import CifarResNet, predict, resnet32

PER_BATCH = 16


def write_cifar10(folder: Path, per_batch: int = PER_BATCH, seed: int = 0) -> Path:
    """A CIFAR-10 folder in the standard python layout with ``per_batch`` images per file."""
    rng = np.random.default_rng(seed)
    root = folder / "cifar-10-batches-py"
    root.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            "batch_label": name,
            "labels": rng.integers(0, 10, per_batch).tolist(),
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "filenames": [f"{i}.png" for i in range(per_batch)],
        }
        with open(root / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": per_batch, "label_names": [str(i) for i in range(10)]}, f)
    return root


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """Folder holding a synthetic ``cifar-10-batches-py/`` (80 train, 16 test images)."""
    folder = tmp_path_factory.mktemp("cifar")
    write_cifar10(folder)
    return folder


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    """A ResNet-32 checkpoint with random weights (enough for behaviour tests)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "random_r32.pt"
    save_resnet(path, resnet32().eval(), test_accuracy=float("nan"))
    return path


@pytest.fixture(scope="session")
def env_kwargs(synthetic_dir, random_checkpoint) -> dict:
    return {"data_dir": synthetic_dir, "checkpoint": random_checkpoint, "device": "cpu"}


def real_data_available() -> bool:
    try:
        find_dataset("cifar10")
        return True
    except FileNotFoundError:
        return False


requires_real_data = pytest.mark.skipif(
    not real_data_available(),
    reason="real CIFAR-10 not found: set BLOCKDROP_DATA_DIR to the folder holding cifar-10-batches-py/",
)


def trained_like(model: CifarResNet, seed: int | None = None) -> CifarResNet:
    """``model`` in eval mode with non-trivial BN statistics, so that every block changes the
    output; drawn from the global RNG, or from a generator seeded with ``seed``."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2, generator=generator)
            mod.running_var.uniform_(0.5, 1.5, generator=generator)
    return model.eval()


def synthetic_learnable(folder, n: int = 256):
    """Random images labelled by a random ResNet-32's full prediction: keeping every block is
    always right, and a policy can learn which blocks may go."""
    torch.manual_seed(0)
    model = trained_like(resnet32())
    save_resnet(folder / "r32.pt", model)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
    labels = predict(model, images).tolist()
    root = folder / "cifar-10-batches-py"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({"data": images.reshape(n, -1).numpy(), "labels": labels}, f)
    return {"data_dir": folder, "checkpoint": folder / "r32.pt", "device": "cpu"}
