"""How far an agent's greedy decisions are from flipping: the keep logits of its policy on the
validation images, for the blocks of a set and for the others.

    python results/train/r110-from-k20e60-init-p1-a95/policy_logits.py AGENT.pt 0,1,38,...

A decision flips where a logit crosses 0. The spread of a block's logit over the images (std)
says how much the policy looks at the image at all.
"""

import sys

import torch

from agents.reinforce import load_agent
from blockdrop_env.data import load_cifar

torch.set_num_threads(1)  # beside a training run: one core
agent = load_agent(sys.argv[1], device="cpu", precision="fp32")
blocks = [int(b) for b in sys.argv[2].split(",")]
images, _ = load_cifar("val")
policy = agent.policy.eval()
with torch.no_grad():
    logits = torch.cat([policy.keep_head(policy.features(chunk)) for chunk in images.split(500)])
in_set = torch.zeros(logits.shape[1], dtype=torch.bool)
in_set[blocks] = True
for name, members, flipped in (("set", in_set, logits < 0), ("others", ~in_set, logits > 0)):
    part = logits[:, members]
    print(
        f"{name} ({int(members.sum())} blocks): mean logit {part.mean():.3f}, std over images {part.std(0).mean():.3f} "
        f"(mean over blocks), min {part.min():.3f}, max {part.max():.3f}, "
        f"decisions flipped from the set {int(flipped[:, members].sum())} of {part.numel()}"
    )
print("keep-head weight norm per block:", " ".join(f"{w:.3f}" for w in policy.keep_head.weight.norm(dim=1).tolist()))
