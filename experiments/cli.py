"""What every experiment script shares at its edges: the command line (``python -m ...`` in its
help, a one-line description), argument errors printed as one line, and output checks made before
any work (refuse to overwrite a run, fail early on an unwritable folder, refuse a resume whose
arguments differ from the run's)."""

from __future__ import annotations

import atexit
import errno
import math
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import tyro
from tqdm import tqdm

from agents.baselines import FixedBlocks
from blockdrop_env.checkpoint import CheckpointError, run_metadata
from blockdrop_env.choices import check_choice
from blockdrop_env.data import CifarFormatError, find_dataset
from blockdrop_env.device import resolve_device

A = TypeVar("A")

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
"""Write errors of a full disk, a quota, or a file-size limit: a one-line error, not a traceback."""


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
    except Interrupted as e:
        print(e.message, file=sys.stderr)
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        print(
            f"error: could not write {e.filename or 'an output file'} ({e.strerror}). Outputs are written "
            "whole or not at all: the files from the last completed write are intact. Free some space and "
            "run again (with --resume where the script has it, to continue from the last checkpoint)",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


def require(condition: bool, message: str) -> None:
    """Raise a :class:`UsageError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UsageError(message)


def flag(name: str) -> str:
    """The command-line flag of an argument's field name: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def require_choice(args: object, name: str, choices: Any) -> None:
    """The named argument is one of ``choices``, refused in :func:`check_choice`'s words."""
    try:
        check_choice(flag(name), getattr(args, name), choices)
    except ValueError as e:
        raise UsageError(str(e)) from None


def require_positive(args: object, *names: str) -> None:
    """Each named argument is None or a positive integer."""
    for name in names:
        value = getattr(args, name)
        require(value is None or value >= 1, f"{flag(name)} must be a positive integer; got {value}")


def require_penalty(args: object, *names: str) -> None:
    """Each named penalty is a finite number <= 0 that float32 holds: a wrong answer never earns
    more than a right one, and rewards are float32."""
    for name in names:
        value = getattr(args, name)
        require(
            math.isfinite(value) and FLOAT32_MIN <= value <= 0,
            f"{flag(name)} must be <= 0 (a wrong answer earns at most 0) and a finite number float32 holds "
            f"(>= {FLOAT32_MIN:.3g}); got {value}",
        )


FLOAT32_MIN = -3.4028234663852886e38


SEED_LIMIT = 2**32
"""Seeds lie in [0, 2**32): numpy's global seeding (which SB3 uses) takes 32 bits."""


def require_seed(name: str, *seeds: int) -> None:
    """Each seed is an integer in [0, 2**32)."""
    for seed in seeds:
        require(0 <= seed < SEED_LIMIT, f"{flag(name)} must lie in [0, 2**32); got {seed}")


def require_finite(args: object, *names: str) -> None:
    """Each named argument is a finite number (not inf or nan)."""
    for name in names:
        value = getattr(args, name)
        require(math.isfinite(value), f"{flag(name)} must be a finite number; got {value}")


def require_blocks(args: object, name: str, depth: int) -> FixedBlocks:
    """The named argument, block indices of the ResNet-``depth`` (``--keep-blocks``,
    ``--init-blocks``), as the static policy running them; refused unless distinct and in range."""
    try:
        return FixedBlocks(getattr(args, name), 3 * ((depth - 2) // 6))
    except ValueError as e:
        raise UsageError(f"{flag(name)}: {e} (the ResNet-{depth})") from None


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
        make_folder(folder)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UsageError(f"cannot write to {folder}: {e.strerror or e}") from e


def check_writable_file(path: Path, name: str = "out") -> None:
    """:func:`check_writable` for the folder of an output file, which must not be a folder itself."""
    require(not path.is_dir(), f"{flag(name)} names a file to write; {path} is a folder: give a file path in it")
    check_writable(path.parent)


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


def add_session(saved: list[dict] | None, epoch: int, step: int, dtype: torch.dtype) -> list[dict]:
    """The sessions of a run with this one appended: where each began (``epoch`` epochs done,
    ``step`` steps of the next) and on what machine, commit and training dtype.

    A resumed run may go on on another machine, where ``--precision auto`` may train in another
    dtype (bf16 where the CPU has it natively, fp32 elsewhere): the list says which epochs ran how,
    and a change of dtype is announced on stderr. A resume state from before the list gets one
    unrecorded first session."""
    meta = run_metadata()
    this = {
        "from_epoch": epoch,
        "from_step": step,
        "dtype": str(dtype).removeprefix("torch."),
        "machine": meta["machine"],
        "git_commit": meta["git_commit"],
        "date": meta["date"],
    }
    sessions = list(saved or ([] if epoch == step == 0 else [{"from_epoch": 0, "from_step": 0, "dtype": "unrecorded"}]))
    before = sessions[-1]["dtype"] if sessions else None
    if before not in (None, "unrecorded", this["dtype"]):
        tqdm.write(
            f"note: this session trains in {this['dtype']} from epoch {epoch + 1}, the run's last one in {before} "
            "(--precision auto follows the device); the run's checkpoints record each session",
            file=sys.stderr,
        )
    return [*sessions, this]


LOCK_FILE = ".lock"
_held_locks: dict[Path, int] = {}  # folder -> open descriptor holding its lock, for the process's life
_created_folders: set[Path] = set()  # output folders this process made (removed at exit if left empty)


def lock_folder(folder: Path) -> Path:
    """Take the lock of an output folder (``<folder>/.lock``) for the rest of this process, or raise
    a :class:`UsageError` naming the folder and the process that holds it.

    The lock is an ``flock`` on the file: the system releases it when its process ends, however it
    ends (a killed run leaves no stale lock behind). Take it before touching anything in the folder.
    """
    make_folder(folder)
    key = folder.resolve()
    if key in _held_locks:
        return folder / LOCK_FILE
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # no flock (Windows): unlocked, as before
        pass
    except OSError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UsageError(
            f"{folder} is in use by another job (pid {holder}; lock {path}): wait for it to end, or use another folder"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held_locks[key] = fd
    return path


def make_folder(folder: Path) -> None:
    """``folder.mkdir(parents=True, exist_ok=True)``, remembering a folder this process created so
    that it goes at exit if left empty."""
    if not folder.exists():
        folder.mkdir(parents=True, exist_ok=True)
        _created_folders.add(folder.resolve())


@atexit.register
def _remove_created_folders_left_empty() -> None:
    """At exit, an output folder this process created and left holding only its lock goes (a run
    refused after taking the lock leaves nothing behind)."""
    for folder in _created_folders:
        try:
            if {entry.name for entry in folder.iterdir()} <= {LOCK_FILE}:
                (folder / LOCK_FILE).unlink(missing_ok=True)
                folder.rmdir()
        except OSError:
            pass


def release_folder(folder: Path) -> None:
    """Give up the lock :func:`lock_folder` took (the end of the process does too)."""
    fd = _held_locks.pop(folder.resolve(), None)
    if fd is not None:
        os.close(fd)


class InterruptFlag:
    """Within ``with InterruptFlag() as stop:``, Ctrl-C (SIGINT) and SIGTERM set ``stop.requested``
    instead of raising, so that a training loop can save its resume state at the next step and
    exit; a second Ctrl-C interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(f"{signal.Signals(signum).name}: saving the resume state after this step (Ctrl-C again: stop now)")

    def __enter__(self) -> InterruptFlag:
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they were
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def continue_with(module: str, out: Path) -> str:
    """The line an interrupted run ends with: how to continue it."""
    return f"Continue with: python -m {module} --out {out} --resume (and the run's other arguments)"


class Interrupted(SystemExit):
    """A run stopped by Ctrl-C or SIGTERM after saving its resume state: :func:`run` prints its one
    line and exits with status 130."""

    def __init__(self, message: str) -> None:
        super().__init__(130)
        self.message = message


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files that a killed atomic save of ``path`` left beside it. Call it only
    while holding the folder's lock (:func:`lock_folder`): then no live job owns them."""
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
