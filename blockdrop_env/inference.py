"""The ResNet forward the envs score with: predictions of a frozen ResNet under a keep mask, as
fast as the device allows, with the plain fp32 forward kept for checking.

What each option buys is measured by ``experiments/bench.py`` (the reference there is the plain
path); its agreement check runs both on the test split with the same actions.

* CUDA: fp16 autocast and channels_last, optionally ``torch.compile`` (mode "max-autotune" adds
  CUDA graphs) or fused Triton kernels per residual block (``fused``). The masked form (every
  residual computed, then selected) needs no host synchronisation, so a step never waits on the GPU.
  fp16 rather than bf16: the same tensor-core rate, and three more mantissa bits keep the
  rewards those of the fp32 network (on the CPU check of ``experiments/bench.py``, bf16 autocast
  changed 0.15-0.16% of the test rewards, fp16 0.01-0.03%; results/bench/cpu).
* CPU: channels_last, batches cut into chunks (larger batches fall out of the cache: unchunked,
  the fp32 env step at batch 512 ran at 0.41 of the reference's rate, at 1024 chunked at 1.94), and
  blocks kept by few images run on those alone (gather/scatter; a host synchronisation costs
  nothing there). On CPUs with native bf16 (AVX-512-BF16, AMX; ``cpu_has_native_bf16``) bf16
  autocast in chunks of 256 images, which ran the forward about 1.7 times as fast as fp32 and kept
  99.8% of the test rewards (results/bench/cpu); elsewhere fp32 in chunks of 64, where bf16 is
  emulated. ``precision="fp32"`` keeps fp32 everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .choices import check_choice
from .device import Precision, check_precision, cpu_has_native_bf16
from .resnet import CifarResNet

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
FusedKernels = Literal["one", "two"]
ForwardDtype = Literal["float32", "float16", "bfloat16"]


CPU_FP32_CHUNK = 64
"""Images per chunk of the CPU's fp32 forward (the fastest measured, results/bench/cpu)."""
CPU_BF16_CHUNK = 256
"""Images per chunk of the CPU's bf16 forward: bf16 activations take half the cache of fp32 ones."""


@dataclass(frozen=True)
class ForwardOptions:
    """How :class:`MaskedPredictor` runs the ResNet."""

    dtype: ForwardDtype = "float32"
    """Autocast precision of the convolutions: "float32" (no autocast), "float16" or "bfloat16"."""
    channels_last: bool = False
    """Weights and activations in channels_last memory format."""
    chunk: int | None = None
    """Run the batch in chunks of this many images (None: in one call)."""
    gather_below: float = 0.0
    """Blocks kept by fewer than this fraction of a chunk run on their keepers alone (0: never)."""
    compile: CompileMode | None = None
    """A ``torch.compile`` mode, or None for eager."""
    pad_to: int | None = None
    """Pad each batch (chunk) to a multiple of this many images, so that a compiled forward sees
    few shapes (each new shape compiles anew); None: no padding."""
    fused: FusedKernels | None = None
    """Residual blocks as fused Triton kernels, "one" or "two" per block
    (``blockdrop_env.fused_blocks``; Triton runs on CUDA, or on the CPU under
    ``TRITON_INTERPRET=1``); None: torch operations."""

    def __post_init__(self) -> None:
        check_choice("dtype", self.dtype, ForwardDtype)
        check_choice("fused", self.fused, FusedKernels, none_ok=True)
        check_choice("compile", self.compile, CompileMode, none_ok=True)
        if self.fused and (self.compile is not None or self.gather_below > 0):
            raise ValueError("fused blocks skip dropped images themselves: no compile, no gather/scatter")
        if self.compile is not None and self.gather_below > 0:
            raise ValueError("gather/scatter shapes depend on the data: it cannot be compiled (gather_below=0)")
        for name in ("chunk", "pad_to"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive number of images or None; got {value}")

    @classmethod
    def for_device(
        cls,
        device: torch.device,
        compile: CompileMode | None = None,
        fused: FusedKernels | None = None,
        precision: Precision = "auto",
    ) -> ForwardOptions:
        """The fastest measured options on ``device`` (see the module docstring), compiled or
        with fused blocks when asked; ``precision="fp32"`` keeps them in fp32."""
        fp32 = check_precision(precision) == "fp32"
        if device.type == "cuda":
            pad_to = 1024 if compile else None
            dtype = "float32" if fp32 else "float16"
            return cls(dtype=dtype, channels_last=True, compile=compile, pad_to=pad_to, fused=fused)
        gather_below = 0.0 if compile or fused else 0.8
        bf16 = not fp32 and cpu_has_native_bf16()
        return cls(
            dtype="bfloat16" if bf16 else "float32",
            channels_last=True,
            chunk=CPU_BF16_CHUNK if bf16 else CPU_FP32_CHUNK,
            gather_below=gather_below,
            compile=compile,
            fused=fused,
        )


PLAIN = ForwardOptions()
"""The reference: ``resnet(images, keep)`` in fp32, in one call."""


class MaskedPredictor:
    """``predictor(images, keep)`` -> predicted classes (B,) of ``resnet`` under ``keep``, no grad.

    Args:
        resnet: the ResNet; read at every call, so finetuning that updates its weights in place is
            seen at once. With ``channels_last`` its parameters are moved to that format (same
            values).
        options: how to run it; default: :meth:`ForwardOptions.for_device`. A compiled forward
            compiles at the first call of each batch shape (on CUDA batches are padded to a
            multiple of 1024 images: ``pad_to``), so nothing is compiled twice.
    """

    def __init__(self, resnet: CifarResNet, options: ForwardOptions | None = None) -> None:
        self.resnet = resnet
        self.device = next(resnet.parameters()).device
        self.options = options or ForwardOptions.for_device(self.device)
        if self.options.fused and self.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                f"fused Triton blocks run on CUDA (or on the CPU under TRITON_INTERPRET=1, for checking); "
                f"this ResNet is on {self.device}: leave fused=None"
            )
        self.dtype: torch.dtype = getattr(torch, self.options.dtype)
        if self.options.channels_last:
            resnet.to(memory_format=torch.channels_last)
        self._forward = self._eager
        if self.options.compile is not None:
            # dynamic=False: one specialised graph per (padded) shape, never a slower dynamic one.
            self._forward = torch.compile(self._eager, mode=self.options.compile, dynamic=False)

    @torch.no_grad()
    def __call__(self, images: Tensor, keep: Tensor) -> Tensor:
        chunk = self.options.chunk
        if chunk is not None and len(images) > chunk:
            return torch.cat(
                [self._padded(images[i : i + chunk], keep[i : i + chunk]) for i in range(0, len(images), chunk)]
            )
        return self._padded(images, keep)

    @property
    def shares_prefix(self) -> bool:
        """Whether :meth:`pair` runs the blocks two actions share once (the CPU's eager gather/scatter
        forward, where a host synchronisation costs nothing); else it runs both in one stacked batch."""
        return self.options.gather_below > 0 and self.options.compile is None and not self.options.fused

    @torch.no_grad()
    def pair(self, images: Tensor, keep: Tensor, other: Tensor) -> Tensor:
        """Predicted classes (2, B) under two keep masks on the same images: the blocks both run
        before their first difference run once per image (:meth:`CifarResNet.pair_features`)."""
        if not self.shares_prefix:
            both = torch.stack([keep, other])
            return self(images.expand(2, *images.shape).flatten(0, 1), both.flatten(0, 1)).view(2, -1)
        chunk = self.options.chunk or len(images)
        parts = [slice(i, i + chunk) for i in range(0, len(images), chunk)]
        return torch.cat([self._pair(images[p], keep[p], other[p]) for p in parts], dim=1)

    def _pair(self, images: Tensor, keep: Tensor, other: Tensor) -> Tensor:
        if self.options.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            features = self.resnet.pair_features(images, keep, other, gather_below=self.options.gather_below)
            return self.resnet.fc(features).argmax(-1)

    def _padded(self, images: Tensor, keep: Tensor) -> Tensor:
        batch, pad_to = len(images), self.options.pad_to
        pad = 0 if pad_to is None else -batch % pad_to
        if pad:
            images = torch.cat([images, images[-1:].expand(pad, -1, -1, -1)])
            keep = torch.cat([keep, keep[-1:].expand(pad, -1)])
        predictions = self._forward(images, keep)[:batch]
        # CUDA-graph outputs are overwritten by the next replay.
        return predictions if self.options.compile is None else predictions.clone()

    def _eager(self, images: Tensor, keep: Tensor) -> Tensor:
        if self.options.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.options.fused:
            from .fused_blocks import fused_features  # imports Triton: only when asked for

            features = fused_features(self.resnet, images, keep, self.dtype, self.options.fused)
            return self.resnet.fc(features).argmax(1)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            features = self.resnet.features(images, keep, gather_below=self.options.gather_below)
            return self.resnet.fc(features).argmax(1)
