"""CIFAR-10/100 from the standard python layout, as uint8 tensors, and whole-batch augmentation.

Splits: "test" is the test file(s); the train file(s) are cut into "train" (their first 45,000
images) and "val" (the last tenth, 5,000 images, :func:`val_size`: for CIFAR-10 the second half of
``data_batch_5``), so that every choice (epoch, penalty, which run ships) is made on images that
training never sees; "trainval" is all 50,000 train images (what the shipped ResNets were
pretrained on). The cut is fixed, not drawn: ``torchvision.datasets.CIFAR10(train=True)`` gives
the same validation images as ``Subset(dataset, range(45000, 50000))``.

Where the data is, in order: an explicit directory, ``$BLOCKDROP_DATA_DIR``, then the default
places (:func:`default_data_dirs`). Each place may hold ``cifar-10-batches-py/`` (or
``cifar-100-python/``) or be that folder itself. When none has it and ``download=True`` (the
scripts' ``--download``), torchvision downloads it (about 170 MB) into the explicit directory, else
``$BLOCKDROP_DATA_DIR``, else the user's cache ``~/.cache/blockdrop/data`` (``$XDG_CACHE_HOME``
respected); otherwise a ``FileNotFoundError`` lists every place tried and says how to fix it.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .choices import check_choice

ENV_VAR = "BLOCKDROP_DATA_DIR"
SPLITS = ("train", "val", "trainval", "test")
"""Split names; "train" and "val" partition "trainval" (see the module docstring)."""


def val_size(num_train_images: int) -> int:
    """Images held out of the end of the train files as the validation split: a tenth (5,000 of
    CIFAR's 50,000)."""
    return num_train_images // 10


@dataclass(frozen=True)
class Layout:
    """Where a CIFAR variant keeps its files and labels."""

    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int


LAYOUTS = {
    "cifar10": Layout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
        10,
    ),
    "cifar100": Layout("cifar-100-python", ("train",), ("test",), "fine_labels", 100),
}


class CifarFormatError(ValueError):
    """A CIFAR file is missing, truncated, corrupt, or holds wrong shapes or labels."""


def project_root() -> Path:
    """The folder holding this package (the repository root for a checkout)."""
    return Path(__file__).resolve().parent.parent


def default_data_dirs() -> list[Path]:
    """Default places, in order: ``./data`` of the checkout and ``~/.cache/blockdrop/data`` (the
    download target). Only those the user owns are searched (:func:`candidate_dirs`): data found
    without being named must not be anyone else's."""
    root = project_root()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "blockdrop" / "data"
    return [root / "data", cache]


def _owned(folder: Path) -> bool:
    """Whether the user owns ``folder`` (a missing folder holds nothing to distrust)."""
    try:
        return not hasattr(os, "getuid") or folder.stat().st_uid == os.getuid()
    except FileNotFoundError:
        return True
    except OSError:
        return False


def candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Places to look, in order: the folder named by the caller, else ``$BLOCKDROP_DATA_DIR``,
    else the default places the user owns."""
    if data_dir is not None:
        return [Path(data_dir)]
    if os.environ.get(ENV_VAR):
        return [Path(os.environ[ENV_VAR])]
    return [d for d in default_data_dirs() if _owned(d)]


def download_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Where ``download=True`` puts the dataset: ``data_dir``, else ``$BLOCKDROP_DATA_DIR``, else
    the user's cache folder (the last of :func:`default_data_dirs`)."""
    if data_dir is not None or os.environ.get(ENV_VAR):
        return candidate_dirs(data_dir)[0]
    return default_data_dirs()[-1]


def find_dataset(dataset: str = "cifar10", data_dir: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The folder holding the dataset's batch files; see the module docstring for the search."""
    layout = _layout(dataset)
    tried = []
    for place in candidate_dirs(data_dir):
        for folder in (place / layout.folder, place):
            missing = [f for f in layout.train_files + layout.test_files if not (folder / f).is_file()]
            if not missing:
                return folder
            partial = len(missing) < len(layout.train_files + layout.test_files)
            tried.append(f"{folder} (lacks {', '.join(missing)})" if partial else str(folder))
    if download:
        from torchvision import datasets

        root = download_dir(data_dir)
        cls = datasets.CIFAR10 if dataset == "cifar10" else datasets.CIFAR100
        cls(str(root), train=True, download=True)
        return root / layout.folder
    listing = "\n".join(f"  - {t}" for t in tried)
    raise FileNotFoundError(
        f"{dataset} ({layout.folder}/) not found. Places tried:\n{listing}\n"
        f"Fix: pass data_dir=..., set ${ENV_VAR} to the folder holding {layout.folder}/, "
        f"or pass download=True (--download to the scripts) to fetch it into {download_dir(data_dir)}."
    )


def _layout(dataset: str) -> Layout:
    return LAYOUTS[check_choice("dataset", dataset, LAYOUTS)]


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles what the CIFAR files hold (dicts, lists, strings, bytes, numbers, numpy arrays) and
    refuses every other global: a crafted file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol 2 writes bytes from Python 3
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: CIFAR files hold only arrays and lists")
        return super().find_class(module, name)


def _unpickle(path: Path):  # noqa: ANN202 - whatever the file holds, checked by the caller
    with open(path, "rb") as f:
        return _CifarUnpickler(f, encoding="latin1").load()


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _unpickle(path)
    except FileNotFoundError:
        raise CifarFormatError(f"{path}: file is missing") from None
    except Exception as e:  # truncated pickles raise EOFError, UnpicklingError, ValueError, ...
        raise CifarFormatError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
        raise CifarFormatError(f"{path}: expected a dict with 'data' and '{label_key}'")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise CifarFormatError(f"{path}: 'data' must be uint8 of shape (N, 3072); got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise CifarFormatError(
            f"{path}: need one integer label per image; got {labels.dtype} {labels.shape} for {data.shape[0]} images"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise CifarFormatError(f"{path}: labels must lie in [0, {num_classes}); got [{labels.min()}, {labels.max()}]")
    return data, labels


def _batch_size_from_meta(folder: Path) -> int | None:
    """Images per batch file as ``batches.meta`` declares it (CIFAR-10 only), else None."""
    meta = folder / "batches.meta"
    if not meta.is_file():
        return None
    try:
        return int(_unpickle(meta)["num_cases_per_batch"])
    except Exception as e:
        raise CifarFormatError(f"{meta}: unreadable ({type(e).__name__}: {e})") from e


@lru_cache(maxsize=8)
def _load_cached(folder: str, dataset: str, split: str) -> tuple[Tensor, Tensor]:
    if split in ("train", "val"):
        # Copies, so that a split's tensors do not keep the whole train set alive.
        images, labels = _load_cached(folder, dataset, "trainval")
        cut = len(labels) - val_size(len(labels))
        part = slice(0, cut) if split == "train" else slice(cut, None)
        return images[part].clone(), labels[part].clone()
    layout = _layout(dataset)
    files = layout.train_files if split == "trainval" else layout.test_files
    per_batch = _batch_size_from_meta(Path(folder))
    parts = []
    for name in files:
        data, labels = _read_batch(Path(folder) / name, layout.label_key, layout.num_classes)
        if per_batch is not None and len(data) != per_batch:
            raise CifarFormatError(f"{Path(folder) / name}: holds {len(data)} images; batches.meta says {per_batch}")
        parts.append((data, labels))
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def load_cifar(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    dataset: str = "cifar10",
    download: bool = False,
) -> tuple[Tensor, Tensor]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of a split (one of :data:`SPLITS`).

    The tensors are cached per folder and shared between callers: treat them as read-only.
    """
    check_choice("split", split, SPLITS)
    folder = find_dataset(dataset, data_dir, download)
    return _load_cached(str(folder.resolve()), dataset, split)


def random_crop_flip(images: Tensor, generator: torch.Generator | None = None, pad: int = 4) -> Tensor:
    """Random crop after zero padding by ``pad`` and random horizontal flip, for a whole batch.

    One gather builds every crop: no per-image Python loop. ``generator`` lives on the images'
    device and makes the draw reproducible.
    """
    b, _, h, w = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b, 1), device=device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), device=device, generator=generator)
    flip = torch.rand((b, 1), device=device, generator=generator) < 0.5
    rows = dy + torch.arange(h, device=device)
    cols_fwd = torch.arange(w, device=device)
    cols = dx + torch.where(flip, cols_fwd.flip(0), cols_fwd)
    idx_b = torch.arange(b, device=device).view(b, 1, 1, 1)
    idx_c = torch.arange(images.shape[1], device=device).view(1, -1, 1, 1)
    return padded[idx_b, idx_c, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]
