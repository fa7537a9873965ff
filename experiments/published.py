"""Published CIFAR-10 reference points, for the accuracy-FLOPs comparison of ``experiments.evaluate``.

Accuracies are as published (test split). FLOPs are ours (2 x multiply-adds, like every figure of
this project): exact for the static ResNets, whose architecture we share; for an agent published
with its mean blocks kept, estimated as its ResNet (32 or 110) running that many average blocks plus
the ResNet-8 policy (the authors' CIFAR policy). Sources: ``../shared/docs/BLOCKDROP.md``.
"""

from __future__ import annotations

from agents.policy import PolicyNet
from blockdrop_env.resnet import CifarResNet

# (name, depth of the static ResNet, accuracy)
STATIC = (
    ("He et al. 2016: ResNet-20", 20, 0.9125),
    ("He et al. 2016: ResNet-32", 32, 0.9249),
    ("He et al. 2016: ResNet-44", 44, 0.9283),
    ("He et al. 2016: ResNet-56", 56, 0.9303),
    ("He et al. 2016: ResNet-110", 110, 0.9357),
)
# (name, depth of the ResNet it steers, accuracy, mean blocks kept, or None where not published)
AGENTS = (
    ("BlockDrop paper: ResNet-32 curriculum agent", 32, 0.886, None),
    ("public reproduction of the authors' code, 670 curriculum epochs", 32, 0.879, 12.98),
    ("BlockDrop paper: ResNet-110 finetuned at -10", 110, 0.936, 16.93),
)


def published_rows(depth: int = 32) -> list[dict]:
    """The published points beside an env on the ResNet-``depth``: the agents that steer that
    ResNet, and the static ResNets up to it and the next one deeper (the line its agents have to
    beat, without stretching the plot far past it). Rows are shaped like ``experiments.evaluate``'s
    (``blocks_mean`` / ``flops_mean`` None where unknown; no reward: their penalties and networks
    are not ours)."""
    depths = sorted(d for _, d, _ in STATIC)
    if depth not in {d for _, d, _, _ in AGENTS}:
        raise ValueError(f"no published agents steer a ResNet-{depth} (published: 32, 110)")
    deepest = next((d for d in depths if d > depth), depth)
    rows = []
    for name, static_depth, accuracy in STATIC:
        if static_depth <= deepest:
            net = CifarResNet(static_depth)
            rows.append(_row(name, accuracy, net.num_blocks, float(net.flops()), static=True))
    base = CifarResNet(depth)
    policy = float(PolicyNet(base.num_blocks).flops())  # the authors' ResNet-8 policy on full-size images
    for name, agent_depth, accuracy, blocks in AGENTS:
        if agent_depth == depth:
            flops = None if blocks is None else float(base.fixed_flops + blocks * base.block_flops.mean()) + policy
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
