"""RLlib's face of the env. RLlib has no action distribution for ``MultiBinary`` (ray-project/ray
issue 1519: "Unsupported action space: MultiBinary(15)") and its CNN encoder takes float images with
the channels last, so the env goes to RLlib as ``MultiDiscrete([2] * K)`` (one two-way choice per
block: the same keep mask) over float32 HWC images:

    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.tune.registry import register_env
    from blockdrop_env.rllib import CONV_FILTERS, make_rllib_env

    register_env("blockdrop", lambda config: make_rllib_env(**config))
    config = PPOConfig().environment("blockdrop").rl_module(model_config={"conv_filters": CONV_FILTERS})
    algo = config.build_algo()
    algo.train()
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from .wrappers import MultiDiscreteKeep

__all__ = ["CONV_FILTERS", "MultiDiscreteKeep", "make_rllib_env"]

# RLlib's default CNN filters are for 64x64 or larger images: 32 -> 16 -> 8 -> 1 for CIFAR.
CONV_FILTERS = [[16, [3, 3], 2], [32, [3, 3], 2], [64, [8, 8], 1]]


def make_rllib_env(env_id: str = "BlockDrop-CIFAR10-R32", **env_kwargs: Any) -> gym.Env:
    """``gym.make(env_id, **env_kwargs)`` as RLlib takes it: the image as float32 height x width x
    channels (the same pixel values, 0-255) and MultiDiscrete actions."""
    import blockdrop_env  # noqa: F401 - registers the ids (in each of RLlib's env-runner processes)

    env = gym.make(env_id, **env_kwargs)
    channels, height, width = env.observation_space.shape
    hwc = gym.spaces.Box(0.0, 255.0, (height, width, channels), np.float32)
    env = gym.wrappers.TransformObservation(env, lambda image: np.moveaxis(image, 0, -1).astype(np.float32), hwc)
    return MultiDiscreteKeep(env)
