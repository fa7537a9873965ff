"""Choosing the torch device, and the precision that device computes fastest in without changing
what the networks decide."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Literal

import torch

from .choices import check_choice

Precision = Literal["auto", "fp32"]
"""``"auto"``: half precision where the device computes it natively (bf16 autocast for training on
CUDA and on CPUs with native bf16 units; see ``blockdrop_env.inference`` for the env's forward),
fp32 elsewhere; ``"fp32"``: fp32 everywhere, for checking."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else the CPU; anything else goes to ``torch.device``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {device!r}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but CUDA is not available here")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU does not), so that a
    clock read after it times the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_precision(precision: str) -> Precision:
    """``precision`` if it is one of :data:`Precision`, else a ValueError saying what is."""
    return check_choice("precision", precision, Precision)


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor in a ``/proc/cpuinfo`` text (x86 "flags", Arm
    "Features")."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
"""CPU flags of bf16 arithmetic in hardware: AVX-512-BF16 and AMX (x86), FEAT_BF16 (Arm).
oneDNN runs bf16 convolutions on other AVX-512 CPUs too, but by emulation, no faster than fp32."""


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this machine's CPU computes bf16 in hardware (read from ``/proc/cpuinfo`` on Linux;
    False where that cannot be read, which keeps the fp32 path)."""
    cpuinfo = Path("/proc/cpuinfo")
    if platform.system() != "Linux" or not cpuinfo.is_file():
        return False
    return bool(cpu_flags(cpuinfo.read_text(errors="replace")) & NATIVE_BF16_FLAGS)


def training_dtype(device: torch.device, precision: Precision = "auto") -> torch.dtype:
    """The autocast dtype of training on ``device``: bf16 on CUDA and on CPUs with native bf16
    (fp32 master weights and optimiser state stay fp32), unless ``precision`` is "fp32"."""
    check_precision(precision)
    if precision == "fp32":
        return torch.float32
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return torch.bfloat16
    return torch.float32


def autocast(device: torch.device, precision: Precision = "auto") -> torch.autocast:
    """Autocast to :func:`training_dtype` (a disabled context when that is fp32)."""
    dtype = training_dtype(device, precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


@functools.cache  # registered once, however often it is called
def one_thread_in_forked_children() -> None:
    """Make every process forked from this one run torch on one CPU thread.

    torch's OpenMP pool does not survive ``fork``: a child that enters a parallel region the parent
    had used waits for ever. Gymnasium's ``AsyncVectorEnv`` and Tianshou's ``SubprocVectorEnv``
    fork their workers by default, so without this ``gym.make_vec(..., vectorization_mode="async")``
    hangs. One thread per worker is also what several workers on a few cores want. Registered once
    when ``blockdrop_env`` is imported; spawned processes (Ray, ``spawn``, ``forkserver``) are not
    affected.
    """
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_one_thread)


def _one_thread() -> None:
    torch.set_num_threads(1)
