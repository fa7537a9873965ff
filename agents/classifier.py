"""A trained BlockDrop agent as an image classifier: its policy picks each image's blocks, its
(finetuned) ResNet runs only those.

    from agents.classifier import BlockDropClassifier
    model = BlockDropClassifier.load("r32-in16-finetune-p2-cpu")
    logits, keep = model.classify(images)  # uint8 (B, 3, 32, 32); keep: the blocks each image ran
    program = model.export()                # torch.export, for deployment: torch.export.save(program, "a.pt2")

Unlike the masked forward of training (every residual computed, then selected), a dropped block
costs nothing here: each block runs on the images that keep it alone (at batch 1: it runs or it is
skipped), so the FLOPs the policy saves can show up as time saved.
"""

from __future__ import annotations

import copy
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from blockdrop_env.checkpoint import load_resnet
from blockdrop_env.resnet import CifarResNet

from .policy import PolicyNet
from .pretrained import load_policy


def fold_batch_norm(module: nn.Module) -> nn.Module:
    """Fold every batch norm that follows a convolution in an ``nn.Sequential`` into that
    convolution's weights and bias, in place (eval-mode arithmetic, equal up to rounding). The
    deployed form: one op fewer per convolution, and what ``torch.export`` needs, as batch norm
    cannot be traced on a batch whose size depends on the data (the images that keep a block)."""
    for sequence in module.modules():
        if isinstance(sequence, nn.Sequential):
            for i in range(len(sequence) - 1):
                conv, norm = sequence[i], sequence[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                    sequence[i], sequence[i + 1] = fuse_conv_bn_eval(conv.eval(), norm.eval()), nn.Identity()
    return module


class _LogitsAndKeep(nn.Module):
    """``classify`` as a module's forward, the form ``torch.export`` traces."""

    def __init__(self, classifier: BlockDropClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.classifier.classify(images)


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
        # One image: each block runs or is skipped, read with one host synchronisation. (Not when
        # exporting, which is asked first: testing the length would fix the exported batch size.)
        if not torch.compiler.is_exporting() and len(images) == 1:
            for block, kept in zip(self.resnet.blocks, keep[0].tolist(), strict=True):
                x = block(x) if kept else block.shortcut(x)
        else:
            for k, block in enumerate(self.resnet.blocks):
                x = block.forward_gathered(x, keep[:, k])  # the block runs on its keepers alone
        return self.resnet.fc(F.adaptive_avg_pool2d(x, 1).flatten(1)), keep

    def forward(self, images: Tensor) -> Tensor:
        """Logits (B, classes) of uint8 images (B, 3, 32, 32)."""
        return self.classify(images)[0]

    def folded(self) -> BlockDropClassifier:
        """A copy with the batch norms folded into the convolutions (:func:`fold_batch_norm`)."""
        return fold_batch_norm(copy.deepcopy(self))

    def export(self, max_batch: int = 4096) -> torch.export.ExportedProgram:
        """The folded classifier as a ``torch.export`` program mapping uint8 images (B, 3, 32, 32),
        any B up to ``max_batch``, to ``(logits, keep)``; the skipping stays data-dependent (each
        block runs on the images that keep it). Save it with ``torch.export.save(program, path)``,
        run it with ``torch.export.load(path).module()(images)``."""
        if max_batch < 2:
            raise ValueError(f"max_batch must be >= 2; got {max_batch}")
        device = next(self.parameters()).device
        example = torch.zeros(2, 3, 32, 32, dtype=torch.uint8, device=device)
        batch = torch.export.Dim("batch", min=1, max=max_batch)
        with torch.no_grad():
            return torch.export.export(_LogitsAndKeep(self.folded()), (example,), dynamic_shapes=({0: batch},))

    def flops(self, keep: Tensor) -> Tensor:
        """FLOPs per image (B,) of classifying with ``keep``: the policy's and the blocks run."""
        return self.resnet.flops(keep) + self.policy.flops()
