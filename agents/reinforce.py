"""Self-critical REINFORCE for BlockDrop (Wu et al. 2018), against the vector env.

Per batch of images: keep probabilities s = policy(x); the greedy action ``s >= 0.5`` is the
baseline; the exploration probabilities are bounded, ``s' = alpha*s + (1-alpha)*(1-s)``; the
sampled action ``u ~ Bernoulli(s')`` is stepped in the env; the advantage is
``R(u) - R(greedy)`` on the same images; the loss is the advantage-weighted negative
log-likelihood minus ``beta`` times an entropy bonus on s' (by default the authors' form, which
also covers the blocks the curriculum forces on). Forced blocks are left out of the log-likelihood.

Joint finetuning reaches the env's ResNet through ``env.unwrapped.resnet`` (the module the env
scores with, so rewards follow the finetuned weights at once) and the current labels through
``env.unwrapped.privileged_labels()``; it adds the cross-entropy of the ResNet's prediction under the sampled
action. That forward (with gradients) also gives the sampled action's predictions, which the env
scores as they are (``step_with_baseline(sampled, greedy, prediction=...)``), so only the greedy
baseline costs the env a forward of its own. Curriculum learning steps
``step_with_baseline(sampled, greedy)``, which scores both actions in one ResNet forward.

Networks run under bf16 autocast where the device computes bf16 natively (CUDA; CPUs with
AVX-512-BF16 or AMX), with fp32 weights and optimiser state; ``precision="fp32"`` keeps fp32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from blockdrop_env.checkpoint import atomic_save, load_checkpoint, require_finite_weights
from blockdrop_env.choices import check_choice
from blockdrop_env.device import Precision, autocast, check_precision, resolve_device
from blockdrop_env.inference import CompileMode

from .policy import PolicyNet

FinetuneBatchNorm = Literal["frozen", "train"]
"""Batch norm of the ResNet in joint finetuning. "frozen" (default): eval mode, the pretrained
statistics stay; "train": as the authors' ``finetune.py``, train mode in the training step (batch
statistics in the forwards of the sampled and the greedy action, running averages updated by
both), eval mode in every test walk."""

FinetuneForward = Literal["masked", "kept"]
"""How the ResNet's forward in joint finetuning treats dropped blocks. "masked" (default): every
residual is computed and the dropped ones are masked out, as the authors' ``finetune.py`` did;
"kept": each block runs on the images that keep it alone (gather, compute, scatter), so the work
follows the blocks kept, and with batch norm in train mode a block's batch statistics come from
the images that use it. See docs/RESULTS.md for the measured speed and accuracy of each."""

FinetuneTarget = Literal["sampled", "greedy", "both"]
"""Which action's ResNet forward the cross-entropy trains in joint finetuning. "sampled" (default):
the explored action, as the authors' ``finetune.py`` did, so the ResNet learns under masks about a
fifth of whose decisions are flipped by exploration (alpha 0.8); "greedy": the action the agent
deploys, so the ResNet fits the block sets it is used with (the sampled action is still scored for
the policy gradient); "both": the mean of the two cross-entropies."""

ResNetOptimizer = Literal["adam", "sgd"]
"""How joint finetuning updates the ResNet. "adam" (default): in the policy's Adam, as the authors'
``finetune.py``; "sgd": SGD with Nesterov momentum 0.9 and weight decay 5e-4, the recipe the
ResNets were pretrained with (``experiments.pretrain_resnet``), while the policy keeps its Adam."""

EntropyBonus = Literal["bernoulli", "authors"]
"""How the exploration bonus is computed from the bounded probabilities s'.

"authors" (default): ``-s'_k log s'_k`` summed over all K blocks, as the authors'
``cl_training.py`` computes it. That term peaks at s' = 1/e, i.e. s = 0.28 with alpha 0.8, so it
pulls every block, forced ones included, toward being dropped by the greedy policy: a drop prior
the published runs had, and the better curriculum agent in our CPU comparison (docs/RESULTS.md,
"The entropy bonus").
"bernoulli": the entropy of Bernoulli(s'_k) summed over the blocks the policy decides (the
textbook bonus); it pulls each decided s'_k toward 1/2.
"""


@dataclass
class ReinforceConfig:
    """Hyper-parameters of one stage (the paper's defaults are curriculum learning's)."""

    lr: float = 1e-3
    """Adam learning rate of the policy (and of the ResNet when finetuning)."""
    alpha: float = 0.8
    """Bound of the exploration probabilities: s' = alpha*s + (1-alpha)*(1-s)."""
    beta: float = 0.1
    """Weight of the entropy bonus (0 in joint finetuning)."""
    entropy: EntropyBonus = "authors"
    """Form of the entropy bonus; see :data:`EntropyBonus`."""
    finetune: bool = False
    """Train the env's ResNet too, with the cross-entropy under the sampled action."""
    finetune_bn: FinetuneBatchNorm = "frozen"
    """Batch norm of the ResNet in finetuning; see :data:`FinetuneBatchNorm`."""
    finetune_forward: FinetuneForward = "masked"
    """Forward of the ResNet in finetuning; see :data:`FinetuneForward`."""
    finetune_target: FinetuneTarget = "sampled"
    """Action whose forward the ResNet's cross-entropy trains; see :data:`FinetuneTarget`."""
    resnet_optimizer: ResNetOptimizer = "adam"
    """Optimiser of the ResNet when finetuning; see :data:`ResNetOptimizer`."""
    resnet_lr: float | None = None
    """Learning rate of the ResNet when finetuning; default: ``lr`` under "adam", 0.01 under "sgd"."""

    def __post_init__(self) -> None:
        # A misspelt choice would otherwise act as another one (the code tests for one value).
        choices = {
            "entropy": EntropyBonus,
            "finetune_bn": FinetuneBatchNorm,
            "finetune_forward": FinetuneForward,
            "finetune_target": FinetuneTarget,
            "resnet_optimizer": ResNetOptimizer,
        }
        for field, kind in choices.items():
            check_choice(field, getattr(self, field), kind)
        if not self.lr >= 0:
            raise ValueError(f"lr must be >= 0; got {self.lr}")
        if not 0.5 < self.alpha <= 1:  # at 0.5 every s' is 1/2: the policy gets no gradient
            raise ValueError(f"alpha must lie in (0.5, 1]; got {self.alpha}")
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0; got {self.beta}")
        if self.resnet_lr is not None and not self.resnet_lr > 0:
            raise ValueError(f"resnet_lr must be > 0; got {self.resnet_lr}")

    @property
    def resnet_rate(self) -> float:
        """The ResNet's learning rate in finetuning (``resnet_lr`` or its default)."""
        if self.resnet_lr is not None:
            return self.resnet_lr
        return self.lr if self.resnet_optimizer == "adam" else 0.01


def bounded(probs: Tensor, alpha: float) -> Tensor:
    """Exploration probabilities s' = alpha*s + (1-alpha)*(1-s), kept away from 0 and 1."""
    return alpha * probs + (1 - alpha) * (1 - probs)


def entropy_bonus(s: Tensor, decide: Tensor, form: EntropyBonus) -> Tensor:
    """The exploration bonus of bounded probabilities ``s`` (B, K), summed over blocks and
    averaged over the batch; ``decide`` (K,) bool marks the blocks the policy chose."""
    if form == "bernoulli":
        return (-(s * torch.log(s) + (1 - s) * torch.log1p(-s)) * decide.float()).sum(1).mean()
    if form == "authors":
        return (-s * torch.log(s)).sum(1).mean()
    raise ValueError(f"entropy bonus must be 'bernoulli' or 'authors'; got {form!r}")


def reinforce_loss(
    probs: Tensor,
    sampled: Tensor,
    advantage: Tensor,
    decide: Tensor,
    alpha: float,
    beta: float,
    entropy: EntropyBonus,
) -> tuple[Tensor, Tensor]:
    """Self-critical policy-gradient loss and the entropy bonus (before ``beta``).

    ``probs`` (B, K) keep probabilities s; ``sampled`` (B, K) the action taken; ``advantage`` (B,)
    R(sampled) - R(greedy); ``decide`` (K,) bool, the blocks the policy chose (others are forced).
    """
    s = bounded(probs, alpha)
    u = sampled.float()
    log_likelihood = ((u * torch.log(s) + (1 - u) * torch.log1p(-s)) * decide.float()).sum(1)
    bonus = entropy_bonus(s, decide, entropy)
    loss = -(advantage.detach() * log_likelihood).mean() - beta * bonus
    return loss, bonus


class BlockDropAgent:
    """A policy network, optionally a finetuned ResNet state, and the act functions.

    ``compile``: a ``torch.compile`` mode for the policy's forward (and so its backward) in
    training and acting; None (default) runs it eager. ``policy`` stays the plain module
    (its state is what is saved). ``precision``: "auto" (bf16 autocast where the device has it
    natively) or "fp32"; it also sets the autocast of the ResNet's forward in joint finetuning.
    ``policy_input``: the image size the policy looks at (32, or 16 / 8 for a cheaper policy on a
    downsampled image; see :class:`PolicyNet`).
    """

    def __init__(
        self,
        num_blocks: int = 15,
        device: str | torch.device = "auto",
        compile: CompileMode | None = None,
        precision: Precision = "auto",
        policy_input: int = 32,
    ) -> None:
        self.device = resolve_device(device)
        self.precision = check_precision(precision)
        self.policy = PolicyNet(num_blocks, policy_input).to(self.device)
        self.forward = self.policy if compile is None else torch.compile(self.policy, mode=compile, dynamic=False)
        self.resnet_state: dict[str, Tensor] | None = None  # set when loaded from a finetuned run

    def autocast(self) -> torch.autocast:
        """The autocast context the agent's networks train and act in."""
        return autocast(self.device, self.precision)

    @torch.no_grad()
    def greedy(self, images: Tensor) -> Tensor:
        """The deterministic policy ``s >= 0.5`` (eval mode), as a bool (B, K) mask."""
        was_training = self.policy.training
        self.policy.eval()
        with self.autocast():
            probs, _ = self.forward(images)
        self.policy.train(was_training)
        return probs >= 0.5


def train_step(
    agent: BlockDropAgent,
    env: Any,
    optimizer: torch.optim.Optimizer | JointOptimizer,
    config: ReinforceConfig,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """One self-critical update on the env's current images; steps the env once.

    ``env`` is a :class:`BlockDropVectorEnv`, optionally under a
    :class:`blockdrop_env.wrappers.CurriculumVectorWrapper` whose ``forced`` blocks are on in
    both actions and out of the loss. Returns detached per-step statistics (no host sync).
    """
    base = env.unwrapped
    forced = getattr(env, "forced", torch.zeros(base.num_blocks, dtype=torch.bool, device=base.device))
    images = base.images
    agent.policy.train()
    with agent.autocast():
        probs, _ = agent.forward(images)
    probs = probs.float()
    greedy = (probs.detach() >= 0.5) | forced
    sampled = torch.bernoulli(bounded(probs.detach(), config.alpha), generator=generator).bool() | forced
    loss_extra, prediction, baseline_prediction = torch.zeros((), device=base.device), None, None
    if config.finetune:
        batch_stats = config.finetune_bn == "train"
        gather_below = 2.0 if config.finetune_forward == "kept" else 0.0  # above 1: every block gathers
        target = config.finetune_target
        actions = {"sampled": sampled, "greedy": greedy}
        trained = {"sampled": target != "greedy", "greedy": target != "sampled"}
        predictions: dict[str, Tensor | None] = {"sampled": None, "greedy": None}
        losses = []
        base.resnet.train(batch_stats)
        with agent.autocast():
            for name in sorted(actions, key=lambda n: not trained[n]):  # the trained forwards first
                # Under batch statistics the untrained action is scored here too, as the authors
                # ran it; otherwise the env scores it with a forward of its own (prediction None).
                if trained[name] or batch_stats:
                    with torch.set_grad_enabled(trained[name]):
                        logits = base.resnet(images, actions[name], gather_below=gather_below)
                    predictions[name] = logits.detach().argmax(1)
                    if trained[name]:
                        losses.append(F.cross_entropy(logits.float(), base.privileged_labels()))
        base.resnet.eval()  # the env's own forwards and every test walk use the running statistics
        loss_extra = torch.stack(losses).mean()
        prediction, baseline_prediction = predictions["sampled"], predictions["greedy"]
    # Without predictions, the greedy baseline is scored in the same ResNet forward as the sampled action.
    _, reward, _, _, info = env.step_with_baseline(
        sampled, greedy, prediction=prediction, baseline_prediction=baseline_prediction
    )
    reward_greedy = info["baseline_reward"]
    loss, entropy = reinforce_loss(
        probs, sampled, reward - reward_greedy, ~forced, config.alpha, config.beta, config.entropy
    )
    optimizer.zero_grad(set_to_none=True)
    (loss + loss_extra).backward()
    optimizer.step()
    return {
        "reward": reward.detach(),
        "reward_greedy": reward_greedy,
        "correct": info["correct"],
        "blocks_kept": info["blocks_kept"],
        "greedy": greedy,
        "entropy": entropy.detach(),
        "loss": loss.detach(),
        "ce": loss_extra.detach(),
    }


class JointOptimizer:
    """Optimisers stepped as one (the policy's Adam and the ResNet's SGD), with the
    ``torch.optim.Optimizer`` methods training uses; its state dict holds each one's."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"joint": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("joint", [])
        if len(saved) != len(self.optimizers):  # e.g. a one-optimiser state from another config
            raise ValueError(f"expected the states of {len(self.optimizers)} optimisers; got {len(saved)}")
        for optimizer, one in zip(self.optimizers, saved, strict=True):
            optimizer.load_state_dict(one)


def make_optimizer(agent: BlockDropAgent, env: Any, config: ReinforceConfig) -> torch.optim.Optimizer | JointOptimizer:
    """Adam over the policy, and the env's ResNet when finetuning (which unfreezes its weights; its
    batch norm follows ``config.finetune_bn``), in that Adam or in an SGD of its own
    (``config.resnet_optimizer``). Each parameter group carries its ``base_lr`` for a schedule."""
    resnet = env.unwrapped.resnet
    resnet.requires_grad_(config.finetune)
    policy = {"params": list(agent.policy.parameters()), "base_lr": config.lr}
    weights = {"params": list(resnet.parameters()), "lr": config.resnet_rate, "base_lr": config.resnet_rate}
    # fused: one kernel for the whole update on CUDA instead of a few per parameter group.
    fused = agent.device.type == "cuda"
    if not config.finetune:
        return torch.optim.Adam([policy], lr=config.lr, fused=fused)
    if config.resnet_optimizer == "adam":
        if config.resnet_rate == config.lr:  # one group, as resume states from before the option hold
            both = {**policy, "params": policy["params"] + weights["params"]}
            return torch.optim.Adam([both], lr=config.lr, fused=fused)
        return torch.optim.Adam([policy, weights], lr=config.lr, fused=fused)
    sgd = torch.optim.SGD([weights], momentum=0.9, nesterov=True, weight_decay=5e-4, fused=fused)
    return JointOptimizer(torch.optim.Adam([policy], lr=config.lr, fused=fused), sgd)


def save_agent(path: str | os.PathLike, agent: BlockDropAgent, **state: Any) -> None:
    """Atomically save the policy (and a finetuned ResNet, when given as ``resnet``: the module or
    its state dict) with ``state``."""
    resnet = state.pop("resnet", None)
    resnet_state = resnet.state_dict() if isinstance(resnet, torch.nn.Module) else resnet
    atomic_save(
        {
            "policy": agent.policy.state_dict(),
            "num_blocks": agent.policy.num_blocks,
            "policy_input": agent.policy.input_size,
            "resnet": None if resnet_state is None else {k: v.detach().cpu() for k, v in resnet_state.items()},
            **state,
        },
        path,
    )


def load_agent(
    path: str | os.PathLike, device: str | torch.device = "auto", precision: Precision = "auto"
) -> BlockDropAgent:
    """A trained agent from a checkpoint of ``experiments.train_blockdrop`` (or ``save_agent``)."""
    return agent_from_checkpoint(load_agent_checkpoint(path), device, precision)


def load_agent_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The contents of an agent checkpoint (policy, finetuned ResNet, and what training saved)."""
    return load_checkpoint(path, required="policy", kind="BlockDrop agent checkpoint")


def agent_from_checkpoint(
    ckpt: dict[str, Any], device: str | torch.device = "auto", precision: Precision = "auto"
) -> BlockDropAgent:
    """The agent held by loaded checkpoint contents (see :func:`load_agent_checkpoint`)."""
    require_finite_weights(ckpt["policy"], "the agent's policy")
    if ckpt.get("resnet") is not None:
        require_finite_weights(ckpt["resnet"], "the agent's finetuned ResNet")
    size = ckpt.get("policy_input", 32)  # checkpoints before the option: full-size images
    agent = BlockDropAgent(ckpt.get("num_blocks", 15), device, precision=precision, policy_input=size)
    agent.policy.load_state_dict(ckpt["policy"])
    agent.policy.eval()
    agent.resnet_state = ckpt.get("resnet")
    return agent
