"""The BlockDrop policy network: a ResNet-8 trunk, K sigmoid keep probabilities, a value head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blockdrop_env.resnet import CifarResNet


def resnet8_trunk() -> CifarResNet:
    """The policy's trunk: the env's CIFAR ResNet with one block per stage, pooled 64-d output."""
    return CifarResNet(blocks_per_stage=1, num_classes=0)


class PolicyNet(nn.Module):
    """ResNet-8 (the env's CIFAR ResNet with one block per stage) whose pooled 64-d feature feeds
    a linear layer with K sigmoid outputs, the keep probabilities s_k, and a linear value head
    (kept for fidelity to the paper and for actor-critic users; REINFORCE does not use it).

    Takes raw uint8 images like the env's observations. ``input_size`` < 32 first averages them
    down to that size (16: 2x2 pooling), as the authors' ImageNet policy looks at a downsampled
    image: the trunk then costs (input_size / 32)^2 of its full-size FLOPs. Its weights and
    activations are channels_last, the layout oneDNN (CPU) and cuDNN's bf16 kernels (CUDA) run
    fastest in.
    """

    def __init__(self, num_blocks: int = 15, input_size: int = 32) -> None:
        super().__init__()
        if input_size not in (8, 16, 32):
            raise ValueError(f"input_size must be 32 (full images), 16 or 8; got {input_size!r}")
        self.num_blocks = num_blocks
        self.input_size = input_size
        self.trunk = resnet8_trunk()
        self.keep_head = nn.Linear(self.trunk.feature_dim, num_blocks)
        self.value_head = nn.Linear(self.trunk.feature_dim, 1)
        self.to(memory_format=torch.channels_last)

    def features(self, images: Tensor) -> Tensor:
        """The trunk's pooled features (B, 64) of raw images, downsampled to ``input_size`` first;
        the keep head turns them into keep logits."""
        images = images.contiguous(memory_format=torch.channels_last)
        if self.input_size < images.shape[-1]:
            images = F.avg_pool2d(images.float().div(255), images.shape[-1] // self.input_size)
        return self.trunk(images)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Keep probabilities (B, K) and values (B,)."""
        features = self.features(images)
        return torch.sigmoid(self.keep_head(features)), self.value_head(features).squeeze(1)

    @torch.no_grad()
    def start_as(self, keep: Tensor, prob: float = 0.9) -> None:
        """Make the policy one block set for every image: keep probability ``prob`` for the blocks
        of ``keep`` (K,) bool, ``1 - prob`` for the others, whatever the image (the keep head's
        weights zeroed). Training from here learns per-image departures from a static network's
        blocks (e.g. a pruned ResNet's), where a curriculum would start from every block."""
        if keep.shape != (self.num_blocks,) or keep.dtype != torch.bool:
            got = f"{keep.dtype} {tuple(keep.shape)}"
            raise ValueError(f"keep must be a bool mask of shape ({self.num_blocks},); got {got}")
        if not 0.5 < prob < 1:
            raise ValueError(f"prob must lie in (0.5, 1); got {prob}")
        logit = math.log(prob / (1 - prob))
        self.keep_head.weight.zero_()
        self.keep_head.bias.copy_(torch.where(keep.to(self.keep_head.bias.device), logit, -logit))

    def flops(self) -> float:
        """FLOPs per image of deciding: the trunk and the keep head (2 x multiply-adds; the
        downsampling's few additions are not counted, like the ResNet's pooling)."""
        area = (self.input_size / 32) ** 2  # every convolution's output shrinks with the input
        return float(self.trunk.flops()) * area + 2 * self.trunk.feature_dim * self.num_blocks
