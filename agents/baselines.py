"""Heuristic policies of the paper's comparisons: every block, the first k, k at random; every
block but one (the drop landscape: which blocks matter); and one fixed block set for every image
(a network pruned to those blocks, chosen from the landscape).

A policy here is any callable from a batch of images (B, 3, 32, 32) uint8 to a bool keep mask
(B, K) on the same device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class FullPolicy:
    """Runs every block: the plain ResNet."""

    def __init__(self, num_blocks: int = 15) -> None:
        self.num_blocks = num_blocks

    def __call__(self, images: Tensor) -> Tensor:
        return torch.ones(len(images), self.num_blocks, dtype=torch.bool, device=images.device)


class FirstK:
    """Runs the first k blocks and drops the rest (the paper's FirstK)."""

    def __init__(self, k: int, num_blocks: int = 15) -> None:
        if not 0 <= k <= num_blocks:
            raise ValueError(f"k must lie in [0, {num_blocks}]; got {k}")
        self.k, self.num_blocks = k, num_blocks

    def __call__(self, images: Tensor) -> Tensor:
        keep = torch.arange(self.num_blocks, device=images.device) < self.k
        return keep.expand(len(images), -1)


class RandomK:
    """Runs k blocks chosen uniformly at random for each image (the paper's RandomK)."""

    def __init__(self, k: int, num_blocks: int = 15, seed: int = 0, device: str | torch.device | None = None) -> None:
        if not 0 <= k <= num_blocks:
            raise ValueError(f"k must lie in [0, {num_blocks}]; got {k}")
        self.k, self.num_blocks, self.seed = k, num_blocks, seed
        self.generator = None if device is None else torch.Generator(device).manual_seed(seed)

    def __call__(self, images: Tensor) -> Tensor:
        # The generator lives where the images are (a CPU generator cannot draw on the GPU): made
        # at the first call unless a device was given, and made again if the images move.
        if self.generator is None or self.generator.device.type != images.device.type:
            self.generator = torch.Generator(images.device).manual_seed(self.seed)
        scores = torch.rand(len(images), self.num_blocks, device=images.device, generator=self.generator)
        rank = scores.argsort(1).argsort(1)  # a uniformly random permutation per image
        return rank < self.k


class DropOne:
    """Runs every block but block ``k``: its accuracy says how much block k matters."""

    def __init__(self, k: int, num_blocks: int = 15) -> None:
        if not 0 <= k < num_blocks:
            raise ValueError(f"k must lie in [0, {num_blocks}); got {k}")
        self.k, self.num_blocks = k, num_blocks

    def __call__(self, images: Tensor) -> Tensor:
        keep = torch.arange(self.num_blocks, device=images.device) != self.k
        return keep.expand(len(images), -1)


class FixedBlocks:
    """Runs the same blocks (0-based indices) for every image: the network pruned to them."""

    def __init__(self, blocks: Sequence[int], num_blocks: int = 15) -> None:
        if not blocks or any(not 0 <= b < num_blocks for b in blocks) or len(set(blocks)) != len(blocks):
            raise ValueError(f"blocks must be distinct indices in [0, {num_blocks}), at least one; got {list(blocks)}")
        self.blocks, self.num_blocks = sorted(blocks), num_blocks

    def mask(self, device: str | torch.device | None = None) -> Tensor:
        """The keep mask of one image (num_blocks,), bool."""
        keep = torch.zeros(self.num_blocks, dtype=torch.bool, device=device)
        keep[self.blocks] = True
        return keep

    def __call__(self, images: Tensor) -> Tensor:
        return self.mask(images.device).expand(len(images), -1)


def blocks_by_drop_cost(drop_accuracies: Sequence[float]) -> list[int]:
    """Block indices ordered from the one whose single drop costs most accuracy to the one that
    costs least (ties: the earlier block first); the first k are the blocks a network pruned to k
    blocks keeps."""
    return sorted(range(len(drop_accuracies)), key=lambda k: (drop_accuracies[k], k))


def drop_landscape(num_blocks: int = 15) -> list[tuple[str, DropOne]]:
    """("drop block k", DropOne(k)) for every block k (0-based, in the order the image meets them)."""
    return [(f"drop block {k}", DropOne(k, num_blocks)) for k in range(num_blocks)]


def heuristic_policies(
    num_blocks: int = 15,
    seed: int = 0,
    device: str | torch.device | None = None,
    budgets: Sequence[int] | None = None,
) -> list[tuple[str, FirstK | RandomK]]:
    """The paper's heuristic sweep: ("FirstK k=i", FirstK(i)) then ("RandomK k=i", RandomK(i))
    for each budget i in ``budgets`` (default: every i = 1..num_blocks)."""
    budgets = range(1, num_blocks + 1) if budgets is None else budgets
    first = [(f"FirstK k={k}", FirstK(k, num_blocks)) for k in budgets]
    rand = [(f"RandomK k={k}", RandomK(k, num_blocks, seed, device)) for k in budgets]
    return first + rand
