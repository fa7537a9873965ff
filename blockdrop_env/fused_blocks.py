"""Residual blocks as fused Triton kernels: one or two kernels per block instead of one per
operation, batch norm folded into the weights, and the images that drop a block skip its
convolutions (their programs read the keep bit first).

Per block, on channels_last (NHWC) activations:

1. ``h = ReLU(conv3x3(x) * bn1_scale + bn1_shift)``, only for the images that keep the block;
2. ``out = ReLU(conv3x3(h) * bn2_scale + bn2_shift + shortcut(x))`` for those images, and
   ``out = shortcut(x)`` for the others, the option-A shortcut (2x2 average pooling and zero
   channels where the stage changes) read straight from ``x``.

"two" kernels: a program per (image, pixel tile) for each step, ``h`` through memory between
them. "one" kernel: a program per image does step 1 over all its tiles, waits at a barrier, then
step 2, so ``h`` is read back while it is still in the caches. Each convolution is an implicit
GEMM: nine ``tl.dot`` of a tile of pixels x input channels by the tap's input x output channel
weights, accumulated in fp32. The stem, pooling and classifier stay in torch.

CUDA in practice; the tests run the kernels on the CPU under Triton's interpreter
(``TRITON_INTERPRET=1``, fp32 only: its half-precision dot is not exact). Whether either form beats cuDNN
and ``torch.compile`` is for ``experiments/bench.py`` on a GPU to say.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from .inference import FusedKernels
from .resnet import BasicBlock, CifarResNet

BLOCK_P = 64
"""Pixels per tile; the 8 x 8 maps of the last stage are one tile. Untuned, as is NUM_WARPS."""
NUM_WARPS = 4


@triton.jit
def _conv_tile(src_ptr, w_ptr, image, p, SRC_H, SRC_W, OUT_W, CIN: tl.constexpr, COUT: tl.constexpr,
               STRIDE: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """fp32 (BLOCK_P, COUT): 3x3 convolution (padding 1) of an NHWC map at output pixels ``p``."""
    ho, wo = p // OUT_W, p % OUT_W
    ci, co = tl.arange(0, CIN), tl.arange(0, COUT)
    acc = tl.zeros((BLOCK_P, COUT), dtype=tl.float32)
    for tap in tl.static_range(9):
        hi, wi = ho * STRIDE + tap // 3 - 1, wo * STRIDE + tap % 3 - 1
        inside = (hi >= 0) & (hi < SRC_H) & (wi >= 0) & (wi < SRC_W)
        pixel = (image * SRC_H + hi) * SRC_W + wi
        xs = tl.load(src_ptr + pixel[:, None] * CIN + ci[None, :], mask=inside[:, None], other=0.0)
        ws = tl.load(w_ptr + (tap * CIN + ci)[:, None] * COUT + co[None, :])
        acc += tl.dot(xs, ws)
    return acc


@triton.jit
def _shortcut_tile(x_ptr, image, p, H, W, WO, CIN: tl.constexpr, COUT: tl.constexpr, STRIDE: tl.constexpr,
                   BLOCK_P: tl.constexpr):  # fmt: skip
    """fp32 (BLOCK_P, COUT): the option-A shortcut, a STRIDE x STRIDE average, channels past CIN zero."""
    ho, wo = p // WO, p % WO
    co = tl.arange(0, COUT)
    total = tl.zeros((BLOCK_P, COUT), dtype=tl.float32)
    for tap in tl.static_range(STRIDE * STRIDE):
        pixel = (image * H + ho * STRIDE + tap // STRIDE) * W + wo * STRIDE + tap % STRIDE
        total += tl.load(x_ptr + pixel[:, None] * CIN + co[None, :], mask=(co < CIN)[None, :], other=0.0).to(tl.float32)
    return total / (STRIDE * STRIDE)


@triton.jit
def _first_half(x_ptr, w1_ptr, shift1_ptr, h_ptr, image, p, H, W, HO, WO, CIN: tl.constexpr,
                COUT: tl.constexpr, STRIDE: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """h = ReLU(conv1(x) + shift1) at pixels ``p``, stored."""
    co = tl.arange(0, COUT)
    acc = _conv_tile(x_ptr, w1_ptr, image, p, H, W, WO, CIN, COUT, STRIDE, BLOCK_P)
    h = tl.maximum(acc + tl.load(shift1_ptr + co)[None, :], 0.0)
    tl.store(h_ptr + (image * HO * WO + p)[:, None] * COUT + co[None, :], h.to(h_ptr.dtype.element_ty))


@triton.jit
def _second_half(h_ptr, w2_ptr, shift2_ptr, x_ptr, out_ptr, kept, image, p, H, W, HO, WO, CIN: tl.constexpr,
                 COUT: tl.constexpr, STRIDE: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """out = ReLU(conv2(h) + shift2 + shortcut(x)) if kept, else shortcut(x), at pixels ``p``, stored."""
    co = tl.arange(0, COUT)
    out = _shortcut_tile(x_ptr, image, p, H, W, WO, CIN, COUT, STRIDE, BLOCK_P)
    if kept:
        acc = _conv_tile(h_ptr, w2_ptr, image, p, HO, WO, WO, COUT, COUT, 1, BLOCK_P)
        out = tl.maximum(acc + tl.load(shift2_ptr + co)[None, :] + out, 0.0)
    tl.store(out_ptr + (image * HO * WO + p)[:, None] * COUT + co[None, :], out.to(out_ptr.dtype.element_ty))


@triton.jit
def _conv1_kernel(x_ptr, w1_ptr, shift1_ptr, keep_ptr, h_ptr, H, W, HO, WO, CIN: tl.constexpr,
                  COUT: tl.constexpr, STRIDE: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """Two-kernel form, first kernel: a program per (image, pixel tile); dropped images return."""
    image = tl.program_id(0).to(tl.int64)  # offsets pass 2**31 past 131,072 images
    if tl.load(keep_ptr + image) != 0:
        p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
        _first_half(x_ptr, w1_ptr, shift1_ptr, h_ptr, image, p, H, W, HO, WO, CIN, COUT, STRIDE, BLOCK_P)


@triton.jit
def _conv2_kernel(h_ptr, w2_ptr, shift2_ptr, x_ptr, keep_ptr, out_ptr, H, W, HO, WO, CIN: tl.constexpr,
                  COUT: tl.constexpr, STRIDE: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """Two-kernel form, second kernel: a program per (image, pixel tile)."""
    image = tl.program_id(0).to(tl.int64)  # offsets pass 2**31 past 131,072 images
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    kept = tl.load(keep_ptr + image) != 0
    _second_half(h_ptr, w2_ptr, shift2_ptr, x_ptr, out_ptr, kept, image, p, H, W, HO, WO, CIN, COUT, STRIDE, BLOCK_P)


@triton.jit
def _block_kernel(x_ptr, w1_ptr, shift1_ptr, w2_ptr, shift2_ptr, keep_ptr, h_ptr, out_ptr, H, W, HO, WO,
                  CIN: tl.constexpr, COUT: tl.constexpr, STRIDE: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """One-kernel form: a program per image runs both halves over its tiles; ``h`` goes through
    the caches between them (written and read back by the same program, after a barrier)."""
    image = tl.program_id(0).to(tl.int64)  # offsets pass 2**31 past 131,072 images
    kept = tl.load(keep_ptr + image) != 0
    if kept:
        for tile in range(0, HO * WO // BLOCK_P):
            p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
            _first_half(x_ptr, w1_ptr, shift1_ptr, h_ptr, image, p, H, W, HO, WO, CIN, COUT, STRIDE, BLOCK_P)
        tl.debug_barrier()  # every thread's h stores are visible before any thread reads them
    for tile in range(0, HO * WO // BLOCK_P):
        p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
        _second_half(
            h_ptr, w2_ptr, shift2_ptr, x_ptr, out_ptr, kept, image, p, H, W, HO, WO, CIN, COUT, STRIDE, BLOCK_P
        )


_FOLDS: weakref.WeakKeyDictionary[torch.nn.Conv2d, tuple[tuple, tuple[Tensor, Tensor]]] = weakref.WeakKeyDictionary()


def _folded(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Eval-mode batch norm folded into the convolution: (9, C_in, C_out) weights and a shift.

    Cached per convolution, so a frozen ResNet folds once instead of at every forward (about six
    small kernels per convolution). The key holds each tensor's version counter, which every in-place
    change moves (optimiser steps, ``load_state_dict``, batch-norm statistics in training), so a
    changed tensor is folded afresh (inference tensors have no counter: never cached)."""
    tensors = (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    versions = ((id(t), t.data_ptr(), object() if t.is_inference() else t._version) for t in tensors)
    key = (dtype, bn.eps, *versions)
    cached = _FOLDS.get(conv)
    if cached is not None and cached[0] == key:
        return cached[1]
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        weight = (conv.weight * scale[:, None, None, None]).permute(2, 3, 1, 0).reshape(9, conv.in_channels, -1)
        folded = weight.to(dtype).contiguous(), (bn.bias - bn.running_mean * scale).float().contiguous()
    _FOLDS[conv] = (key, folded)
    return folded


def fused_block(
    block: BasicBlock,
    x: Tensor,
    keep: Tensor,
    kernels: FusedKernels = "one",
    block_pixels: int = BLOCK_P,
    num_warps: int = NUM_WARPS,
) -> Tensor:
    """``block(x, keep)`` by fused kernels; ``x`` is (B, C, H, W) channels_last.

    ``kernels``: "one" kernel per block (a program per image, ``h`` stays in the caches) or "two"
    (a program per image tile, ``h`` goes through memory between them). ``block_pixels`` (a power
    of two, at least 16) and ``num_warps`` are the tuning knobs.
    """
    conv1, bn1, _, conv2, bn2 = block.residual
    batch, cin, height, width = x.shape
    cout, stride = conv2.out_channels, conv1.stride[0]
    ho, wo = height // stride, width // stride
    block_p = min(block_pixels, ho * wo)
    if (ho * wo) % block_p:
        raise ValueError(f"fused blocks need maps of a multiple of {block_p} pixels; got {ho} x {wo}")
    x = x.contiguous(memory_format=torch.channels_last)
    w1, shift1 = _folded(conv1, bn1, x.dtype)
    w2, shift2 = _folded(conv2, bn2, x.dtype)
    keep = keep.to(torch.int8).contiguous()
    h = torch.empty(batch, cout, ho, wo, device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    out = torch.empty_like(h)
    sizes = (height, width, ho, wo, cin, cout, stride, block_p)
    if kernels == "one":
        # No software pipelining of the tile loop: with Triton's default stages the kernel asked for
        # 440 KiB of shared memory on an H200 (227 KiB there) and did not launch.
        _block_kernel[(batch,)](x, w1, shift1, w2, shift2, keep, h, out, *sizes, num_warps=num_warps, num_stages=1)
    elif kernels == "two":
        grid = (batch, ho * wo // block_p)
        _conv1_kernel[grid](x, w1, shift1, keep, h, *sizes, num_warps=num_warps)
        _conv2_kernel[grid](h, w2, shift2, x, keep, out, *sizes, num_warps=num_warps)
    else:
        raise ValueError(f"kernels must be 'one' or 'two'; got {kernels!r}")
    return out


@torch.no_grad()
def fused_features(
    resnet: CifarResNet,
    images: Tensor,
    keep: Tensor,
    dtype: torch.dtype = torch.float16,
    kernels: FusedKernels = "one",
) -> Tensor:
    """``resnet.features(images, keep)`` with every residual block run by :func:`fused_block`,
    activations in ``dtype``."""
    with torch.autocast(images.device.type, dtype=dtype, enabled=dtype != torch.float32):
        x = resnet.stem(resnet.normalize(images.contiguous(memory_format=torch.channels_last)))
    x = x.to(dtype)
    for k, block in enumerate(resnet.blocks):
        x = fused_block(block, x, keep[:, k], kernels)
    return F.adaptive_avg_pool2d(x.float(), 1).flatten(1)
