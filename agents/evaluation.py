"""Evaluation as the paper's ``test.py`` reports it: walk a split in order with a deterministic
policy; accuracy, block usage and FLOPs (mean and std), unique policies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from blockdrop_env.data import load_cifar
from blockdrop_env.device import resolve_device
from blockdrop_env.vector_env import BlockDropVectorEnv

Policy = Callable[[Tensor], Tensor]


@dataclass
class Evaluation:
    """Summary of a policy on a split, and the per-image records behind it (on the CPU)."""

    accuracy: float
    reward_mean: float
    blocks_mean: float
    blocks_std: float
    flops_mean: float
    flops_std: float
    unique_policies: int
    num_images: int
    keep: Tensor = field(repr=False)  # (N, K) bool
    correct: Tensor = field(repr=False)  # (N,) bool
    labels: Tensor = field(repr=False)  # (N,) int64

    def summary(self) -> dict[str, float | int]:
        return {k: v for k, v in asdict(self).items() if not isinstance(v, Tensor)}


def make_eval_env(
    split: str = "test",
    batch_size: int | None = None,
    limit: int | None = None,
    data_dir=None,
    dataset: str = "cifar10",
    **kwargs,
) -> BlockDropVectorEnv:
    """A vector env that walks ``split`` without augmentation, ``batch_size`` images at a time
    (default: 1000 on CUDA, 256 on the CPU, where the forward runs in chunks of 64 anyway);
    fewer when the split, or its first ``limit`` images, is smaller."""
    if batch_size is None:
        batch_size = 1000 if resolve_device(kwargs.get("device", "auto")).type == "cuda" else 256
    num_images = len(load_cifar(split, data_dir, dataset, kwargs.get("download", False))[1])
    num_images = min(num_images, limit or num_images)
    return BlockDropVectorEnv(
        num_envs=min(batch_size, num_images),
        split=split,
        augment=False,
        limit=limit,
        data_dir=data_dir,
        dataset=dataset,
        **kwargs,
    )


@torch.no_grad()
def evaluate(env: BlockDropVectorEnv, policy: Policy, policy_flops: float = 0.0) -> Evaluation:
    """Run ``policy`` on every image of the env's split, in order, ``env.num_envs`` at a time.

    ``policy_flops`` (per image) is added to the ResNet's FLOPs: the policy network's own cost.
    The last, ragged batch is padded by repeating the last image and the padding is dropped.
    """
    n, b = env.task.num_images, env.num_envs
    keeps, corrects, rewards, flops, labels = [], [], [], [], []
    for start in range(0, n, b):
        index = torch.arange(start, start + b, device=env.device).clamp_(max=n - 1)
        images, _ = env.reset(options={"index": index})
        keep = policy(images)
        out = env.evaluate(keep)
        valid = slice(0, min(b, n - start))
        keeps.append(keep[valid].bool())
        corrects.append(out.correct[valid])
        rewards.append(out.reward[valid])
        flops.append(out.flops[valid])
        labels.append(env.privileged_labels()[valid])
    keep, correct = torch.cat(keeps).cpu(), torch.cat(corrects).cpu()
    blocks = keep.sum(1).double()
    total_flops = torch.cat(flops).cpu() + policy_flops
    return Evaluation(
        accuracy=correct.double().mean().item(),
        reward_mean=torch.cat(rewards).double().mean().item(),
        blocks_mean=blocks.mean().item(),
        blocks_std=blocks.std(unbiased=False).item(),
        flops_mean=total_flops.mean().item(),
        flops_std=total_flops.std(unbiased=False).item(),
        unique_policies=len(torch.unique(keep, dim=0)),
        num_images=n,
        keep=keep,
        correct=correct,
        labels=torch.cat(labels).cpu(),
    )
