"""Residual blocks as fused Triton kernels: two kernels per block instead of one per operation,
and the images that drop a block skip its convolutions (a program per image tile reads its keep
bit first).

Per block, on channels_last (NHWC) activations:

1. ``h = ReLU(conv3x3(x) * bn1_scale + bn1_shift)``, batch norm folded into the weights, computed
   only for the images that keep the block;
2. ``out = ReLU(conv3x3(h) * bn2_scale + bn2_shift + shortcut(x))`` for those images, and
   ``out = shortcut(x)`` for the others, the option-A shortcut (2x2 average pooling and zero
   channels where the stage changes) read straight from ``x``.

Each convolution is an implicit GEMM: nine ``tl.dot`` of a tile of pixels x input channels by
the tap's input x output channel weights, accumulated in fp32. The stem, pooling and classifier
stay in torch. CUDA only in practice; the tests run the kernels on the CPU under Triton's
interpreter (``TRITON_INTERPRET=1``). Whether this beats cuDNN and ``torch.compile`` is for
``experiments/bench.py`` on a GPU to say.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from .resnet import BasicBlock, CifarResNet

BLOCK_P = 64
"""Pixels per program (one image's tile); the 8 x 8 maps of the last stage are one tile."""


@triton.jit
def _conv1_bn_relu(
    x_ptr, w_ptr, shift_ptr, keep_ptr, h_ptr, H, W, HO, WO,
    CIN: tl.constexpr, COUT: tl.constexpr, STRIDE: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    image = tl.program_id(0)
    if tl.load(keep_ptr + image) != 0:
        p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
        ho, wo = p // WO, p % WO
        ci, co = tl.arange(0, CIN), tl.arange(0, COUT)
        acc = tl.zeros((BLOCK_P, COUT), dtype=tl.float32)
        for tap in tl.static_range(9):
            hi, wi = ho * STRIDE + tap // 3 - 1, wo * STRIDE + tap % 3 - 1
            inside = (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
            pixel = (image * H + hi) * W + wi
            xs = tl.load(x_ptr + pixel[:, None] * CIN + ci[None, :], mask=inside[:, None], other=0.0)
            ws = tl.load(w_ptr + (tap * CIN + ci)[:, None] * COUT + co[None, :])
            acc += tl.dot(xs, ws)
        h = tl.maximum(acc + tl.load(shift_ptr + co)[None, :], 0.0)
        tl.store(h_ptr + (image * HO * WO + p)[:, None] * COUT + co[None, :], h.to(h_ptr.dtype.element_ty))


@triton.jit
def _conv2_bn_add_relu(
    h_ptr, w_ptr, shift_ptr, x_ptr, keep_ptr, out_ptr, H, W, HO, WO,
    CIN: tl.constexpr, COUT: tl.constexpr, STRIDE: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    image = tl.program_id(0)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    ho, wo = p // WO, p % WO
    co = tl.arange(0, COUT)
    # Option-A shortcut: average over the STRIDE x STRIDE window, channels past CIN are zero.
    shortcut = tl.zeros((BLOCK_P, COUT), dtype=tl.float32)
    for tap in tl.static_range(STRIDE * STRIDE):
        pixel = (image * H + ho * STRIDE + tap // STRIDE) * W + wo * STRIDE + tap % STRIDE
        x = tl.load(x_ptr + pixel[:, None] * CIN + co[None, :], mask=(co < CIN)[None, :], other=0.0)
        shortcut += x.to(tl.float32)
    out = shortcut / (STRIDE * STRIDE)
    if tl.load(keep_ptr + image) != 0:
        acc = tl.zeros((BLOCK_P, COUT), dtype=tl.float32)
        for tap in tl.static_range(9):
            hi, wi = ho + tap // 3 - 1, wo + tap % 3 - 1
            inside = (hi >= 0) & (hi < HO) & (wi >= 0) & (wi < WO)
            pixel = (image * HO + hi) * WO + wi
            hs = tl.load(h_ptr + pixel[:, None] * COUT + co[None, :], mask=inside[:, None], other=0.0)
            ws = tl.load(w_ptr + (tap * COUT + co)[:, None] * COUT + co[None, :])
            acc += tl.dot(hs, ws)
        out = tl.maximum(acc + tl.load(shift_ptr + co)[None, :] + out, 0.0)
    tl.store(out_ptr + (image * HO * WO + p)[:, None] * COUT + co[None, :], out.to(out_ptr.dtype.element_ty))


def _folded(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Eval-mode batch norm folded into the convolution: (9, C_in, C_out) weights and a shift."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = (conv.weight * scale[:, None, None, None]).permute(2, 3, 1, 0).reshape(9, conv.in_channels, -1)
    return weight.to(dtype).contiguous(), (bn.bias - bn.running_mean * scale).float().contiguous()


def fused_block(block: BasicBlock, x: Tensor, keep: Tensor) -> Tensor:
    """``block(x, keep)`` by the two fused kernels; ``x`` is (B, C, H, W) channels_last."""
    conv1, bn1, _, conv2, bn2 = block.residual
    batch, cin, height, width = x.shape
    cout, stride = conv2.out_channels, conv1.stride[0]
    ho, wo = height // stride, width // stride
    x = x.contiguous(memory_format=torch.channels_last)
    w1, shift1 = _folded(conv1, bn1, x.dtype)
    w2, shift2 = _folded(conv2, bn2, x.dtype)
    keep = keep.to(torch.int8).contiguous()
    h = torch.empty(batch, cout, ho, wo, device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    out = torch.empty_like(h)
    block_p = min(BLOCK_P, ho * wo)
    if (ho * wo) % block_p:
        raise ValueError(f"fused blocks need maps of a multiple of {block_p} pixels; got {ho} x {wo}")
    grid = (batch, ho * wo // block_p)
    _conv1_bn_relu[grid](x, w1, shift1, keep, h, height, width, ho, wo, cin, cout, stride, block_p)
    _conv2_bn_add_relu[grid](h, w2, shift2, x, keep, out, height, width, ho, wo, cin, cout, stride, block_p)
    return out


@torch.no_grad()
def fused_features(resnet: CifarResNet, images: Tensor, keep: Tensor, dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """``resnet.features(images, keep)`` with every residual block run by :func:`fused_block`,
    activations in ``dtype``."""
    with torch.autocast(images.device.type, dtype=dtype, enabled=dtype != torch.float32):
        x = resnet.stem(resnet.normalize(images.contiguous(memory_format=torch.channels_last)))
    x = x.to(dtype)
    for k, block in enumerate(resnet.blocks):
        x = fused_block(block, x, keep[:, k])
    return F.adaptive_avg_pool2d(x.float(), 1).flatten(1)
