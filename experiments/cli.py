"""What every experiment script shares at its edges: the command line (``python -m ...`` in its
help, a one-line description), argument errors printed as one line, and output checks made before
any work (refuse to overwrite a run, fail early on an unwritable folder, refuse a resume whose
arguments differ from the run's)."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import tyro
from tqdm import tqdm

from blockdrop_env.checkpoint import CheckpointError
from blockdrop_env.data import CifarFormatError, find_dataset
from blockdrop_env.device import resolve_device

A = TypeVar("A")


class UsageError(ValueError):
    """A bad argument, or an output the script refuses to touch: printed by :func:`run` as one
    line (no traceback), exit status 2, like a missing, corrupt or foreign data file or checkpoint."""


def run(main: Callable[[A], Any], args_type: type[A], module: str, doc: str | None) -> None:
    """Parse the command line into ``args_type`` and call ``main``; a :class:`UsageError` ends the
    script with one line on stderr. ``module`` names the script in ``--help`` (``python -m module``);
    the first paragraph of ``doc`` is its description."""
    description = (doc or "").strip().split("\n\n")[0].replace("\n", " ")
    args = tyro.cli(args_type, prog=f"python -m {module}", description=description)
    try:
        main(args)
    except (UsageError, FileNotFoundError, CheckpointError, CifarFormatError) as e:  # bad arguments or files
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def require(condition: bool, message: str) -> None:
    """Raise a :class:`UsageError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UsageError(message)


def flag(name: str) -> str:
    """The command-line flag of an argument's field name: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def require_positive(args: object, *names: str) -> None:
    """Each named argument is None or a positive integer."""
    for name in names:
        value = getattr(args, name)
        require(value is None or value >= 1, f"{flag(name)} must be a positive integer; got {value}")


def require_penalty(args: object, *names: str) -> None:
    """Each named penalty is <= 0: a wrong answer never earns more than a right one."""
    for name in names:
        value = getattr(args, name)
        require(value <= 0, f"{flag(name)} must be <= 0 (a wrong answer earns at most 0); got {value}")


@dataclass
class DataArgs:
    data_dir: str | None = None
    """Folder holding the CIFAR batches; default: the package's search (see blockdrop_env.data)."""
    download: bool = False
    """Download the dataset (CIFAR-10: about 170 MB) into --data-dir, else $BLOCKDROP_DATA_DIR, else
    ~/.cache/blockdrop/data, when it is not found."""

    def fetch_data(self, dataset: str = "cifar10") -> None:
        """With --download, fetch the dataset now when it is missing: every split then loads from there."""
        if self.download:
            find_dataset(dataset, self.data_dir, download=True)


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, before any work."""
    try:
        resolve_device(device)
    except ValueError as e:
        raise UsageError(f"--device: {e}") from None


def check_writable(folder: Path) -> None:
    """Create ``folder`` and write a file in it, or raise a UsageError: an output that cannot be
    written fails before the work, not after."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UsageError(f"cannot write to {folder}: {e.strerror or e}") from e


def refuse_overwrite(paths: Iterable[Path], resume: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run where one already wrote ``paths``, unless told to start over."""
    if resume or overwrite:
        return
    for path in paths:
        if path.exists():
            raise UsageError(
                f"{path} exists: pass --resume to continue that run, or --overwrite to start over and replace it"
            )


def resume_mismatch(saved: dict[str, str], current: dict[str, Any], may_change: Iterable[str]) -> list[str]:
    """The arguments of ``current`` whose string form differs from the run's ``saved`` ones,
    outside ``may_change``, as "name: saved -> current" lines."""
    free = set(may_change)
    return [
        f"{flag(name)}: {saved[name]} -> {value}"
        for name, value in current.items()
        if name not in free and name in saved and saved[name] != str(value)
    ]


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files that a killed atomic save of ``path`` left beside it."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            if tmp.is_file():
                tmp.unlink()
        except OSError:
            pass  # another process's save in flight, or no permission: not ours to force


def duration(seconds: float) -> str:
    """``seconds`` in words a person reads at a glance: "40 s", "12 min", "3.5 h"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def cost_note(seconds: float, what: str, less: str, threshold: float = 600.0) -> str | None:
    """Print (and return) what a run will still cost at the speed measured so far, when that is
    more than ``threshold`` seconds, with how to ask for less."""
    if seconds < threshold:
        return None
    note = f"note: {what} will take about {duration(seconds)} at the speed measured here; {less}"
    tqdm.write(note)
    return note
