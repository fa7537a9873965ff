"""The ResNet forward the envs score with: predictions of a frozen ResNet under a keep mask, as
fast as the device allows, with the plain fp32 forward kept for checking.

What each optimisation buys is measured by ``experiments/bench.py`` (the reference there is the
plain path); its agreement check runs both on the test split with the same actions.

* CUDA: bf16 autocast, channels_last, and optionally ``torch.compile`` (mode "max-autotune"
  adds CUDA graphs). The masked form (every residual computed, then selected) needs no host
  synchronisation, so a step never waits on the GPU.
* CPU: fp32, channels_last, batches cut into chunks of ``CPU_CHUNK`` images (larger batches fall
  out of the cache and run up to 3x slower), and blocks kept by few images run on those alone
  (gather/scatter; host synchronisation costs nothing there).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from .device import autocast
from .resnet import CifarResNet

CPU_CHUNK = 64
"""Images per ResNet call on the CPU (measured: 64-128 keep the activations in cache)."""
CPU_GATHER_BELOW = 0.8
"""On the CPU, a block kept by fewer than this fraction of a chunk runs on its keepers alone."""
COMPILE_BUCKET = 1024
"""Compiled forwards pad the batch to a multiple of this on CUDA, so few shapes compile."""

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


class MaskedPredictor:
    """``predictor(images, keep)`` -> predicted classes (B,) of ``resnet`` under ``keep``, no grad.

    Args:
        resnet: the ResNet; read at every call, so finetuning that updates its weights in place is
            seen at once. On CUDA its parameters are moved to channels_last (same values).
        plain: the reference path, ``resnet(images, keep)`` in fp32 in one call (no
            autocast, chunking, gathering or compilation).
        compile: a ``torch.compile`` mode, or None for eager. Compilation happens at the first call
            of each batch shape (on CUDA batches are padded to a multiple of ``COMPILE_BUCKET``).
            The gather path is off when compiled (its shapes depend on the data).
    """

    def __init__(self, resnet: CifarResNet, *, plain: bool = False, compile: CompileMode | None = None) -> None:
        if plain and compile:
            raise ValueError("the plain path is the uncompiled reference: pass plain=True or compile, not both")
        if compile is not None and compile not in get_args(CompileMode):
            raise ValueError(f"compile must be None or one of {get_args(CompileMode)}; got {compile!r}")
        self.resnet = resnet
        self.device = next(resnet.parameters()).device
        self.plain = plain
        self.compile = compile
        self.cuda = self.device.type == "cuda"
        if not plain:
            resnet.to(memory_format=torch.channels_last)
        self._forward = self._eager
        if compile is not None:
            # dynamic=False: one specialised graph per (bucketed) shape, never a slower dynamic one.
            self._forward = torch.compile(self._eager, mode=compile, dynamic=False)

    @torch.no_grad()
    def __call__(self, images: Tensor, keep: Tensor) -> Tensor:
        if self.plain:
            return self.resnet(images, keep).argmax(1)
        if not self.cuda:
            return torch.cat(
                [
                    self._forward(images[i : i + CPU_CHUNK], keep[i : i + CPU_CHUNK])
                    for i in range(0, len(images), CPU_CHUNK)
                ]
            )
        batch = len(images)
        if self.compile is not None and batch % COMPILE_BUCKET:
            pad = COMPILE_BUCKET - batch % COMPILE_BUCKET
            images = torch.cat([images, images[-1:].expand(pad, -1, -1, -1)])
            keep = torch.cat([keep, keep[-1:].expand(pad, -1)])
        # clone: CUDA-graph outputs are overwritten by the next replay.
        return self._forward(images, keep)[:batch].clone()

    def _eager(self, images: Tensor, keep: Tensor) -> Tensor:
        images = images.contiguous(memory_format=torch.channels_last)
        gather_below = 0.0 if self.cuda or self.compile is not None else CPU_GATHER_BELOW
        with autocast(self.device):
            features = self.resnet.features(images, keep, gather_below=gather_below)
            return self.resnet.fc(features).argmax(1)
