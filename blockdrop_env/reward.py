"""BlockDrop's reward, the one place it is written.

R(keep) = 1 - (blocks_kept / K)^2 when the ResNet's prediction under ``keep`` is right, else
``penalty`` (gamma in the paper, negative: the accuracy/speed trade-off).
"""

from __future__ import annotations

import torch
from torch import Tensor


def blockdrop_reward(correct: Tensor, blocks_kept: Tensor, num_blocks: int, penalty: float) -> Tensor:
    """Reward per sample (float32) from ``correct`` (bool) and ``blocks_kept`` (counts)."""
    sparsity = 1.0 - (blocks_kept.float() / num_blocks) ** 2
    # A Python scalar, not a CPU tensor: moving one to the GPU would wait on it (seen on an H200).
    return torch.where(correct, sparsity, penalty)
