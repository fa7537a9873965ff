"""A trained BlockDrop agent as an image classifier: its policy picks each image's blocks, its
(finetuned) ResNet runs only those.

    from agents.classifier import BlockDropClassifier
    model = BlockDropClassifier.load("r32-in16-finetune-p2-cpu")
    logits, keep = model.classify(images)  # uint8 (B, 3, 32, 32); keep: the blocks each image ran

Unlike the masked forward of training (every residual computed, then selected), a dropped block
costs nothing here: each block runs on the images that keep it alone (at batch 1: it runs or it is
skipped), so the FLOPs the policy saves can show up as time saved.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blockdrop_env.checkpoint import load_resnet
from blockdrop_env.resnet import CifarResNet

from .policy import PolicyNet
from .pretrained import load_policy


class BlockDropClassifier(nn.Module):
    """``policy`` decides, ``resnet`` classifies with the blocks decided; fp32, eval mode.

    Args:
        policy: the agent's policy network (one keep bit per block of ``resnet``).
        resnet: the ResNet the agent was trained with (the finetuned one, for a finetuned agent).
    """

    def __init__(self, policy: PolicyNet, resnet: CifarResNet) -> None:
        super().__init__()
        if policy.num_blocks != resnet.num_blocks:
            raise ValueError(
                f"the policy decides {policy.num_blocks} blocks; the ResNet-{resnet.depth} has {resnet.num_blocks}"
            )
        self.policy = policy.eval()
        self.resnet = resnet.eval()

    @classmethod
    def load(cls, name_or_path: str | os.PathLike, device: str | torch.device = "cpu") -> BlockDropClassifier:
        """A shipped agent by name (``python -m experiments.evaluate --list-policies``) or a training
        run's ``agent.pt``, with the ResNet it was finetuned with (else the shipped one of its depth)."""
        agent = load_policy(name_or_path, device="cpu", precision="fp32")
        depth = 2 * agent.policy.num_blocks + 2  # 6n + 2 layers, 3n blocks
        resnet, _ = load_resnet(depth=depth)
        if agent.resnet_state is not None:
            resnet.load_state_dict(agent.resnet_state)
        return cls(agent.policy, resnet).to(device)

    def check_images(self, images: Tensor) -> None:
        """Refuse anything but a batch of raw CIFAR images: uint8, (B, 3, 32, 32)."""
        if images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 in [0, 255] like the env's observations; got {images.dtype}")
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, 32, 32):
            raise ValueError(f"images must have shape (batch, 3, 32, 32); got {tuple(images.shape)}")

    @torch.no_grad()
    def decide(self, images: Tensor) -> Tensor:
        """The greedy policy's keep mask (B, K) bool."""
        probs, _ = self.policy(images)
        return probs >= 0.5

    @torch.no_grad()
    def classify(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (B, classes) and the keep mask (B, K) each image ran with."""
        self.check_images(images)
        keep = self.decide(images)
        x = self.resnet.stem(self.resnet.normalize(images))
        for k, block in enumerate(self.resnet.blocks):
            x = block.forward_gathered(x, keep[:, k])  # the block runs on its keepers alone
        return self.resnet.fc(F.adaptive_avg_pool2d(x, 1).flatten(1)), keep

    def forward(self, images: Tensor) -> Tensor:
        """Logits (B, classes) of uint8 images (B, 3, 32, 32)."""
        return self.classify(images)[0]

    def flops(self, keep: Tensor) -> Tensor:
        """FLOPs per image (B,) of classifying with ``keep``: the policy's and the blocks run."""
        return self.resnet.flops(keep) + self.policy.flops()
