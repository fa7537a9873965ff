"""The BlockDrop policy network: a ResNet-8 trunk, K sigmoid keep probabilities, a value head."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from blockdrop_env.resnet import CifarResNet


def resnet8_trunk() -> CifarResNet:
    """The policy's trunk: the env's CIFAR ResNet with one block per stage, pooled 64-d output."""
    return CifarResNet(blocks_per_stage=1, num_classes=0)


class PolicyNet(nn.Module):
    """ResNet-8 (the env's CIFAR ResNet with one block per stage) whose pooled 64-d feature feeds
    a linear layer with K sigmoid outputs, the keep probabilities s_k, and a linear value head
    (kept for fidelity to the paper and for actor-critic users; REINFORCE does not use it).

    Takes raw uint8 images like the env's observations. Its weights and activations are
    channels_last, the layout oneDNN (CPU) and cuDNN's bf16 kernels (CUDA) run fastest in.
    """

    def __init__(self, num_blocks: int = 15) -> None:
        super().__init__()
        self.num_blocks = num_blocks
        self.trunk = resnet8_trunk()
        self.keep_head = nn.Linear(self.trunk.feature_dim, num_blocks)
        self.value_head = nn.Linear(self.trunk.feature_dim, 1)
        self.to(memory_format=torch.channels_last)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Keep probabilities (B, K) and values (B,)."""
        features = self.trunk(images.contiguous(memory_format=torch.channels_last))
        return torch.sigmoid(self.keep_head(features)), self.value_head(features).squeeze(1)

    def flops(self) -> float:
        """FLOPs per image of deciding: the trunk and the keep head (2 x multiply-adds)."""
        return float(self.trunk.flops()) + 2 * self.trunk.feature_dim * self.num_blocks
