"""Published CIFAR-10 reference points, for the accuracy-FLOPs comparison of ``experiments.evaluate``.

Accuracies are as published (test split). FLOPs are ours (2 x multiply-adds, like every figure of
this project): exact for the static ResNets, whose architecture we share; for an agent published
with its mean blocks kept, estimated as the ResNet-32 running that many average blocks plus the
ResNet-8 policy (the authors' CIFAR policy). Sources: ``../shared/docs/BLOCKDROP.md``.
"""

from __future__ import annotations

from agents.policy import PolicyNet
from blockdrop_env.resnet import CifarResNet

# (name, depth of the static ResNet, accuracy)
STATIC = (
    ("He et al. 2016: ResNet-20", 20, 0.9125),
    ("He et al. 2016: ResNet-32", 32, 0.9249),
    ("He et al. 2016: ResNet-44", 44, 0.9283),
)
# (name, accuracy, mean blocks kept of the ResNet-32's 15, or None where not published)
AGENTS = (
    ("BlockDrop paper: ResNet-32 curriculum agent", 0.886, None),
    ("public reproduction of the authors' code, 670 curriculum epochs", 0.879, 12.98),
)


def published_rows() -> list[dict]:
    """Rows shaped like ``experiments.evaluate``'s (``blocks_mean`` / ``flops_mean`` None where
    unknown; no reward: their penalties and networks are not ours)."""
    rows = []
    for name, depth, accuracy in STATIC:
        net = CifarResNet(depth)
        blocks = net.num_blocks
        rows.append(_row(name, accuracy, blocks, float(net.flops()), static=True))
    r32 = CifarResNet(32)
    policy = float(PolicyNet(r32.num_blocks).flops())
    for name, accuracy, blocks in AGENTS:
        flops = None if blocks is None else float(r32.fixed_flops + blocks * r32.block_flops.mean()) + policy
        rows.append(_row(name, accuracy, blocks, flops, static=False))
    return rows


def _row(name: str, accuracy: float, blocks: float | None, flops: float | None, static: bool) -> dict:
    return {
        "name": name,
        "published": True,
        "static": static,
        "accuracy": accuracy,
        "blocks_mean": blocks,
        "blocks_std": None,
        "flops_mean": flops,
        "flops_std": None,
        "unique_policies": None,
        "reward_mean": None,
    }
