"""Saving and loading checkpoints: atomic writes, and ResNet checkpoints with metadata."""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from .resnet import CIFAR_MEAN, CIFAR_STD, CifarResNet

SHIPPED_CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"


def default_checkpoint(depth: int = 32, num_classes: int = 10) -> Path:
    """Where the package keeps its pretrained ResNet of this depth (it may not ship one)."""
    dataset = {10: "cifar10", 100: "cifar100"}.get(num_classes, f"{num_classes}classes")
    return SHIPPED_CHECKPOINTS / f"resnet{depth}_{dataset}.pt"


DEFAULT_CHECKPOINT = default_checkpoint()


def shipped_depths(num_classes: int = 10) -> list[int]:
    """Depths of the ResNets the package ships for this many classes."""
    return sorted(d for d in range(8, 1203, 6) if default_checkpoint(d, num_classes).is_file())


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, is of another kind, or does not fit the network asked for."""


def _umask_mode() -> int:
    """Permissions a plain new file gets here (mkstemp's temporary files are private)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


CHECKSUM_KEY = "sha256"


def content_digest(obj: Any) -> str:
    """SHA-256 of a checkpoint's contents (tensors by dtype, shape and bytes; containers and plain
    values by type and value), equal before ``torch.save`` and after ``torch.load``."""
    digest = hashlib.sha256()

    def feed(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            digest.update(f"D{len(x)}".encode())
            for key, value in x.items():
                feed(key)
                feed(value)
        elif isinstance(x, list | tuple):
            digest.update(f"L{type(x).__name__}{len(x)}".encode())
            for value in x:
                feed(value)
        elif isinstance(x, bytes):
            digest.update(b"B" + x)
        else:
            digest.update(f"S{type(x).__name__}:{x!r}".encode())

    feed(obj)
    return digest.hexdigest()


def _naming(error: BaseException, path: Path) -> BaseException:
    """A write error that says which file it was writing (a write to a file object names none)."""
    if isinstance(error, OSError) and error.filename is None and error.errno is not None:
        return OSError(error.errno, error.strerror, str(path))
    return error


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file beside ``path``, then rename: a crash never leaves a
    half-written file where a good one was. A dict gets the SHA-256 of its contents under
    ``CHECKSUM_KEY``, which :func:`load_checkpoint` checks: a file damaged on disk is refused."""
    if isinstance(obj, dict):
        body = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}  # a re-saved checkpoint gets a new one
        obj = {**body, CHECKSUM_KEY: content_digest(body)}
    # Serialised in memory first: torch.save into a file that cannot grow (a full disk) fails with
    # an opaque RuntimeError, a plain write with the OSError that says so.
    data = io.BytesIO()
    torch.save(obj, data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        raise _naming(e, path) from e


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file through a temporary file and a rename, like :func:`atomic_save`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        raise _naming(e, path) from e


def machine_description() -> str:
    """The machine a result was measured on: GPU name (when CUDA is present), CPU count, OS."""
    gpu = f"{torch.cuda.get_device_name(0)}, " if torch.cuda.is_available() else "no GPU, "
    return f"{gpu}{os.cpu_count()} CPUs ({platform.machine()}), {platform.system()}, torch {torch.__version__}"


def _program() -> list[str]:
    """How this process was started: ``-m module`` (as the README's commands are), else the script."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return ["-m", spec.name.removesuffix(".__main__")]
    return [os.path.relpath(sys.argv[0])]


def run_metadata() -> dict[str, str]:
    """Command line, git commit, date and machine of the current run."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=here
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=here
        ).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "command": " ".join(["python", *_program(), *sys.argv[1:]]),
        "git_commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
    }


def save_resnet(path: str | os.PathLike, model: CifarResNet, **meta: Any) -> None:
    """Save a ResNet's weights with its depth, classes, normalisation and ``meta``."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save(
        {
            "state_dict": state,
            "depth": model.depth,
            "num_classes": model.num_classes,
            "normalization": {"mean": CIFAR_MEAN, "std": CIFAR_STD},
            **meta,
        },
        path,
    )


def load_checkpoint(path: str | os.PathLike, required: str = "state_dict", kind: str = "checkpoint") -> dict[str, Any]:
    """A checkpoint dict (tensors and plain data only), with clear errors for a missing,
    unreadable, damaged (checksum) or foreign file (one without the ``required`` key)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{kind} {path} cannot be read ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or required not in ckpt:
        raise CheckpointError(f"{path} is not a {kind} (no '{required}')")
    expected = ckpt.pop(CHECKSUM_KEY, None)  # files written before checksums have none
    if expected is not None and content_digest(ckpt) != expected:
        raise CheckpointError(f"{kind} {path} is damaged: its contents do not match the checksum saved with them")
    return ckpt


def require_finite_weights(state: dict[str, Any], what: str) -> None:
    """Refuse (CheckpointError) a state dict holding inf or nan: a diverged run's weights."""
    floats = {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    bad = [k for k, v in floats.items() if not v.isfinite().all()]
    if bad:
        more = ", ..." if len(bad) > 3 else ""
        raise CheckpointError(f"{what} holds non-finite weights ({', '.join(bad[:3])}{more})")


def load_resnet(
    path: str | os.PathLike | None = None,
    depth: int = 32,
    num_classes: int = 10,
    device: str | torch.device = "cpu",
) -> tuple[CifarResNet, dict[str, Any]]:
    """A ResNet from a checkpoint, in eval mode, and the checkpoint's metadata.

    Refuses (ValueError) a checkpoint whose depth or class count differs from those asked for.
    """
    if path is None:
        path = default_checkpoint(depth, num_classes)
        if not path.is_file():
            raise FileNotFoundError(
                f"no pretrained ResNet-{depth} ({num_classes} classes) ships with the package yet ({path.name}): "
                f"train one with `python -m experiments.pretrain_resnet --depth {depth} --out <file>` "
                "and pass checkpoint=<file>"
            )
    path = Path(path)
    ckpt = load_checkpoint(path)
    found = (ckpt.get("depth"), ckpt.get("num_classes"))
    if found != (depth, num_classes):
        raise CheckpointError(
            f"checkpoint {path} is a ResNet-{found[0]} with {found[1]} classes; "
            f"expected ResNet-{depth} with {num_classes} classes"
        )
    require_finite_weights(ckpt["state_dict"], f"checkpoint {path}")
    model = CifarResNet(depth, num_classes)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit a ResNet-{depth}: {e}") from e
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model.to(device).eval(), meta
