"""Stable-Baselines3 algorithms on BlockDrop: the ResNet-8 features extractor shared with the
BlockDrop agent, and PPO / A2C / TRPO with defaults suited to a one-step bandit."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import VecEnv
from torch import Tensor

from blockdrop_env.choices import check_choice
from blockdrop_env.sb3 import SB3VecEnv

from .policy import resnet8_trunk


class ResNet8Extractor(BaseFeaturesExtractor):
    """The BlockDrop policy's ResNet-8 trunk as an SB3 features extractor (64-d).

    SB3 scales uint8 image observations to [0, 1] before the extractor; the trunk's own
    normalisation takes it from there. (SB3's NatureCNN cannot take 32x32 images.)
    """

    def __init__(self, observation_space: gym.spaces.Box) -> None:
        trunk = resnet8_trunk()
        super().__init__(observation_space, features_dim=trunk.feature_dim)
        self.trunk = trunk

    def forward(self, observations: Tensor) -> Tensor:
        return self.trunk(observations)


def _trpo():
    try:
        from sb3_contrib import TRPO
    except ImportError as e:  # the 'contrib' extra
        raise ImportError("TRPO needs sb3-contrib: pip install 'blockdrop-gym[contrib]'") from e
    return TRPO


# One-step episodes: the return is the reward, so gamma and GAE do not matter (set to 0 and 1
# for clarity); each rollout step yields num_envs samples, so few steps per rollout suffice.
DEFAULTS: dict[str, dict[str, Any]] = {
    "ppo": {
        "n_steps": 4,
        "batch_size": 256,
        "n_epochs": 4,
        "learning_rate": 3e-4,
        "gamma": 0.0,
        "gae_lambda": 1.0,
        "ent_coef": 0.0,
    },
    "a2c": {"n_steps": 1, "learning_rate": 7e-4, "gamma": 0.0, "gae_lambda": 1.0, "ent_coef": 0.0},
    # sb3-contrib's TRPO differentiates the KL once per parameter tensor of the ResNet-8 trunk and
    # runs its conjugate gradient through it, which makes its own defaults many times slower than
    # PPO here: its step from every 8th sample, 5 CG iterations and 3 critic epochs cut that
    # (measured by `python -m experiments.bench --sections sb3`; what they cost in learning and
    # the figures: docs/RESULTS.md, "TRPO on the CPU").
    "trpo": {
        "n_steps": 4,
        "batch_size": 256,
        "learning_rate": 1e-3,
        "gamma": 0.0,
        "gae_lambda": 1.0,
        "sub_sampling_factor": 8,
        "cg_max_steps": 5,
        "n_critic_updates": 3,
    },
}
ALGORITHMS = tuple(DEFAULTS)


def make_sb3_env(env_id: str = "BlockDrop-CIFAR10-R32", num_envs: int = 256, **env_kwargs: Any) -> SB3VecEnv:
    """The native vector env of ``env_id`` (``gym.make_vec``: one batched ResNet forward per step)
    behind SB3's ``VecEnv`` interface."""
    import blockdrop_env  # noqa: F401 - registers the ids

    return SB3VecEnv(gym.make_vec(env_id, num_envs=num_envs, **env_kwargs))


def make_algorithm(
    name: str,
    env: VecEnv | str,
    seed: int = 0,
    device: str | torch.device = "auto",
    num_envs: int = 256,
    env_kwargs: dict[str, Any] | None = None,
    **overrides: Any,
) -> BaseAlgorithm:
    """PPO, A2C (Stable-Baselines3) or TRPO (sb3-contrib) with the ResNet-8 extractor on ``env``:
    an SB3 VecEnv (e.g. :class:`blockdrop_env.sb3.SB3VecEnv`), or an env id such as
    ``"BlockDrop-CIFAR10-R32"``, made with :func:`make_sb3_env` (``num_envs`` images per step,
    ``env_kwargs`` for the env, on ``device``). ``overrides`` go to the algorithm."""
    name = name.lower()
    check_choice("algorithm", name, ALGORITHMS)
    if isinstance(env, str):
        env = make_sb3_env(env, num_envs, device=device, **(env_kwargs or {}))
    elif env_kwargs:
        raise ValueError("env_kwargs configure an env made from an id; this env is made already")
    cls = {"ppo": PPO, "a2c": A2C}.get(name) or _trpo()
    kwargs = {**DEFAULTS[name], **overrides}
    kwargs["policy_kwargs"] = {
        "features_extractor_class": ResNet8Extractor,
        "net_arch": [],
        **kwargs.get("policy_kwargs", {}),
    }
    if name in ("ppo", "trpo"):  # a minibatch cannot exceed the rollout
        kwargs["batch_size"] = min(kwargs["batch_size"], kwargs["n_steps"] * env.num_envs)
    return cls("CnnPolicy", env, seed=seed, device=device, verbose=0, **kwargs)


def greedy_policy(model: BaseAlgorithm):
    """The deterministic action of an SB3 model as a BlockDrop policy (images -> bool keep)."""

    def act(images: Tensor) -> Tensor:
        actions, _ = model.predict(images.cpu().numpy(), deterministic=True)
        return torch.as_tensor(actions, device=images.device) > 0.5

    return act
