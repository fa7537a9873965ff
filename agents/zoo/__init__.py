"""Hyperparameters for RL Baselines3 Zoo (``rl_zoo3``), in the zoo's python form: one module per
algorithm, each with the ``hyperparams`` dictionary the zoo reads (a key per env id)::

    python -m rl_zoo3.train --algo ppo --env BlockDrop-CIFAR10-R32 --gym-packages blockdrop_env -conf agents.zoo.ppo
    python -m rl_zoo3.train --algo a2c --env BlockDrop-CIFAR10-R32 --gym-packages blockdrop_env -conf agents.zoo.a2c

The python form, because a yaml file cannot name the ResNet-8 extractor (the zoo evaluates
``policy_kwargs`` strings in its own namespace) and SB3's default NatureCNN cannot take 32x32
images. The values are :data:`agents.sb3.DEFAULTS`, with rollouts of ``n_envs`` sub-envs.
"""

from __future__ import annotations

from typing import Any

from agents.sb3 import DEFAULTS, ResNet8Extractor

ENV_IDS = ("BlockDrop-CIFAR10-R32", "BlockDrop-CIFAR10-R110")


def hyperparameters(algorithm: str, n_envs: int = 16, n_timesteps: int = 100_000) -> dict[str, dict[str, Any]]:
    """The zoo's ``hyperparams`` for ``algorithm`` ("ppo" or "a2c") on each env id. The zoo steps
    ``n_envs`` single envs (one image each per ResNet forward), so a PPO rollout of ``batch_size``
    samples takes ``batch_size // n_envs`` steps."""
    settings: dict[str, Any] = {
        **DEFAULTS[algorithm],
        "policy": "CnnPolicy",
        "n_envs": n_envs,
        "n_timesteps": n_timesteps,
        "policy_kwargs": {"features_extractor_class": ResNet8Extractor, "net_arch": []},
    }
    if "batch_size" in settings:
        settings["n_steps"] = max(1, settings["batch_size"] // n_envs)
    return {env_id: dict(settings) for env_id in ENV_IDS}
