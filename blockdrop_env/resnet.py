"""The CIFAR ResNet of He et al. (2016) with a per-sample keep mask over its residual blocks.

Depth 6n+2: a 3x3 stem convolution, three stages of n BasicBlocks (16, 32 and 64 channels,
strides 1, 2, 2), global average pooling and a linear classifier. Where a stage changes shape
the shortcut is parameter-free ("option A"): 2x2 average pooling, then zero channels appended.

``forward(x, keep)`` takes a (B, K) 0/1 mask, K = 3n: a kept block outputs
``ReLU(shortcut(x) + residual(x))``, a dropped one ``shortcut(x)`` alone, so one batch can carry
a different policy per image. Inputs are raw images (uint8 in [0, 255]); the normalisation lives
here so that observations stay raw.

The masked forward computes every residual and selects; ``features(..., gather_below=f)`` instead
runs a block's residual only on the images that keep it (gather/scatter) when fewer than a
fraction ``f`` of the batch keep it. That pays on the CPU; it costs a host synchronisation per
block, so the CUDA path (``blockdrop_env.inference``) keeps the masked form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Per-channel statistics of the CIFAR-10 train split, in [0, 1] units (BLOCKDROP.md).
CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)


def conv3x3_flops(in_channels: int, out_channels: int, out_size: int) -> int:
    """FLOPs (2 x multiply-adds) of a 3x3 convolution producing an out_size x out_size map."""
    return 2 * 9 * in_channels * out_channels * out_size * out_size


class ShortcutA(nn.Module):
    """Parameter-free shortcut: average-pool by ``stride``, then append zero channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride)
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN residual over an option-A shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, in_size: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = (
            ShortcutA(in_channels, out_channels, stride)
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )
        out_size = in_size // stride
        self.out_size = out_size
        self.flops = conv3x3_flops(in_channels, out_channels, out_size) + conv3x3_flops(
            out_channels, out_channels, out_size
        )

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        shortcut = self.shortcut(x)
        out = F.relu(shortcut + self.residual(x))
        if keep is None:
            return out
        # The shortcut of a ReLU network is non-negative, so a dropped block passes it unchanged.
        keep = keep.to(out.dtype).view(-1, 1, 1, 1)
        return shortcut + keep * (out - shortcut)

    def forward_gathered(self, x: Tensor, keep: Tensor) -> Tensor:
        """``forward(x, keep)`` computing the residual only for the images with ``keep`` set."""
        shortcut = self.shortcut(x)
        kept = keep.nonzero().squeeze(1)  # host synchronisation: the kept count sizes the batch
        if not torch.compiler.is_exporting():  # an exported program keeps the count symbolic: no branch
            if len(kept) == 0:
                return shortcut
            if len(kept) == len(keep):
                return F.relu(shortcut + self.residual(x))
        return shortcut.index_put((kept,), F.relu(shortcut[kept] + self.residual(x[kept])))


class CifarResNet(nn.Module):
    """ResNet of depth 6n+2 for 32x32 images, with ``forward(x, keep)``.

    Args:
        depth: 6n+2 (20, 32, 44, 56, 110, ...); ResNet-32 has n = 5 and K = 15 blocks.
        num_classes: size of the linear classifier; 0 drops it (``forward`` returns the features).
        blocks_per_stage: overrides ``depth``; 1 gives the ResNet-8 trunk of the policy network.
    """

    def __init__(self, depth: int = 32, num_classes: int = 10, blocks_per_stage: int | None = None) -> None:
        super().__init__()
        if blocks_per_stage is None:
            if depth < 8 or (depth - 2) % 6:
                raise ValueError(f"depth must be 6n+2 with n >= 1 (8, 20, 32, 110, ...); got {depth}")
            blocks_per_stage = (depth - 2) // 6
        if blocks_per_stage < 1 or num_classes < 0:
            raise ValueError(f"need blocks_per_stage >= 1 and num_classes >= 0; got {blocks_per_stage}, {num_classes}")
        self.depth = 6 * blocks_per_stage + 2
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1), persistent=False)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        blocks, channels, size = [], 16, 32
        for stage, width in enumerate((16, 32, 64)):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, width, stride, size))
                channels, size = width, size // stride
        self.blocks = nn.ModuleList(blocks)
        self.feature_dim = channels
        self.fc = nn.Linear(channels, num_classes) if num_classes else nn.Identity()
        # FLOPs per image (2 x multiply-adds of every conv and linear layer), for 32x32 inputs.
        self.fixed_flops = conv3x3_flops(3, 16, 32) + 2 * channels * num_classes
        self.register_buffer(
            "block_flops",
            torch.tensor([b.flops for b in blocks], dtype=torch.float64),
            persistent=False,
        )

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 images in [0, 255] (or floats in [0, 1]) to normalised float32."""
        if images.dtype == torch.uint8:
            images = images.float().div_(255)
        return (images - self.mean) / self.std

    def features(self, images: Tensor, keep: Tensor | None = None, gather_below: float = 0.0) -> Tensor:
        """Pooled features (B, feature_dim) under the keep mask (None: every block runs).

        A block kept by fewer than ``gather_below`` of the images runs on those images alone
        (:meth:`BasicBlock.forward_gathered`); 0 never gathers, above 1 always does.
        """
        if keep is not None and keep.shape != (images.shape[0], self.num_blocks):
            raise ValueError(
                f"keep must have shape (batch, {self.num_blocks}) = "
                f"({images.shape[0]}, {self.num_blocks}); got {tuple(keep.shape)}"
            )
        x = self.stem(self.normalize(images))
        if keep is not None and gather_below > 0:
            keep = keep.bool()
            gather = (keep.float().mean(0) < gather_below).tolist()  # one host synchronisation
        for k, block in enumerate(self.blocks):
            if keep is None:
                x = block(x)
            elif gather_below > 0 and gather[k]:
                x = block.forward_gathered(x, keep[:, k])
            else:
                x = block(x, keep[:, k])
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def pair_features(self, images: Tensor, keep: Tensor, other: Tensor, gather_below: float = 0.0) -> Tensor:
        """``features`` under two keep masks (B, K) at once, as (2, B, feature_dim).

        Both actions run the same blocks on an image up to the first block where they differ, so
        that prefix runs once: an image is forked into a second row only at that block. (In the
        curriculum the forced blocks are that prefix: at its first stages this halves the work of
        scoring a sampled and a greedy action.) Costs one host synchronisation (the fork points).
        """
        for name, mask in (("keep", keep), ("other", other)):
            if mask.shape != (images.shape[0], self.num_blocks):
                raise ValueError(f"{name} must have shape (batch, {self.num_blocks}); got {tuple(mask.shape)}")
        keep, other = keep.bool(), other.bool()
        differ = keep != other
        num_blocks = self.num_blocks
        fork_at = torch.where(differ.any(1), differ.int().argmax(1), num_blocks).tolist()
        forks: dict[int, list[int]] = {}
        for image, block in enumerate(fork_at):
            forks.setdefault(block, []).append(image)
        x = self.stem(self.normalize(images))
        forked = torch.empty(0, dtype=torch.long, device=images.device)  # images with a row of their own for `other`
        for k, block in enumerate(self.blocks):
            if k in forks:
                new = torch.tensor(forks[k], device=images.device)
                x, forked = torch.cat([x, x[new]]), torch.cat([forked, new])
            rows_keep = torch.cat([keep[:, k], other[forked, k]])
            if gather_below > 0 and rows_keep.float().mean().item() < gather_below:
                x = block.forward_gathered(x, rows_keep)
            else:
                x = block(x, rows_keep)
        features = F.adaptive_avg_pool2d(x, 1).flatten(1)
        first = features[: len(keep)]
        return torch.stack([first, first.index_copy(0, forked, features[len(keep) :])])

    def forward(self, images: Tensor, keep: Tensor | None = None, gather_below: float = 0.0) -> Tensor:
        """Class logits (B, num_classes), or the features when the classifier is dropped
        (``gather_below``: see :meth:`features`)."""
        return self.fc(self.features(images, keep, gather_below))

    def flops(self, keep: Tensor | None = None) -> Tensor:
        """FLOPs per image of running the blocks in ``keep`` (B, K); None: the full network."""
        if keep is None:
            return self.block_flops.sum() + self.fixed_flops
        return keep.to(torch.float64) @ self.block_flops + self.fixed_flops


def resnet32(num_classes: int = 10) -> CifarResNet:
    """ResNet-32: 15 blocks, 464,154 parameters for 10 classes."""
    return CifarResNet(32, num_classes)


@torch.no_grad()
def predict(
    model: CifarResNet, images: Tensor, keep: Tensor | None = None, batch_size: int = 1000, gather_below: float = 0.0
) -> Tensor:
    """Predicted classes (N,) of ``images`` under ``keep`` (N, K), in batches, on the model's device,
    in fp32 (the accuracy a checkpoint records is that of the network itself); ``gather_below``: see
    :meth:`CifarResNet.features`."""
    device = next(model.parameters()).device
    preds = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device, non_blocking=True)
        k = None if keep is None else keep[start : start + batch_size].to(device)
        preds.append(model(x, k, gather_below).argmax(1))
    return torch.cat(preds)
