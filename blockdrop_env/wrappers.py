"""Wrappers. Curriculum learning: the agent decides only the last ``decided`` blocks, the earlier
ones are forced on, so any agent (the BlockDrop agent, SB3 algorithms) can train under the paper's
curriculum. ``MultiDiscreteKeep``: the keep mask in a space libraries without ``MultiBinary`` take."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from .task import as_keep_mask


def curriculum_decided(epoch: float, num_blocks: int, step: float = 1.0) -> int:
    """Blocks the agent decides in ``epoch`` (from 0): the last ``min(K, max(1, floor(step * (epoch + 1))))``.

    ``step`` is the number of blocks unlocked per epoch (1 in the paper; 0.1 unlocks one every
    ten epochs). The one curriculum schedule of the package: ``experiments.compare`` passes a
    fractional ``epoch``, its progress in env steps.
    """
    if step <= 0:
        raise ValueError(f"curriculum step must be positive; got {step}")
    return min(num_blocks, max(1, math.floor(step * (epoch + 1) + 1e-9)))


class _Curriculum:
    """Shared state of both wrappers: how many of the last blocks the agent decides."""

    num_blocks: int
    _decided: int

    @property
    def decided(self) -> int:
        return self._decided

    @decided.setter
    def decided(self, value: int) -> None:
        if not 0 <= int(value) <= self.num_blocks:
            raise ValueError(f"decided must lie in [0, {self.num_blocks}]; got {value}")
        self._decided = int(value)
        self._forced = torch.arange(self.num_blocks, device=self._device) < self.num_blocks - self._decided

    @property
    def forced(self) -> Tensor:
        """(K,) bool on the env's device: True for the blocks forced on."""
        return self._forced


class CurriculumWrapper(_Curriculum, gym.ActionWrapper):
    """Single env: forces the first ``K - decided`` blocks of every action on (also in ``score``)."""

    def __init__(self, env: gym.Env, decided: int | None = None) -> None:
        gym.ActionWrapper.__init__(self, env)
        self.num_blocks = int(env.action_space.n)
        self._device = env.unwrapped.task.device
        self.decided = self.num_blocks if decided is None else decided

    def action(self, action: Any) -> np.ndarray:
        keep = as_keep_mask(action, (), self.num_blocks, self._device) | self.forced
        return keep.cpu().numpy()

    def score(self, keep: Any) -> float:
        return self.env.unwrapped.score(self.action(keep))


class CurriculumVectorWrapper(_Curriculum, gym.vector.VectorActionWrapper):
    """Vector env: the same forcing on (num_envs, K) actions, on the device."""

    def __init__(self, env: gym.vector.VectorEnv, decided: int | None = None) -> None:
        gym.vector.VectorActionWrapper.__init__(self, env)
        self.num_blocks = env.unwrapped.num_blocks
        self._device = env.unwrapped.device
        self.decided = self.num_blocks if decided is None else decided

    def actions(self, actions: Any) -> Tensor:
        return as_keep_mask(actions, (self.num_envs,), self.num_blocks, self._device) | self.forced

    def step_with_baseline(
        self, actions: Any, baseline: Any, **predictions: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        """The vector env's ``step_with_baseline`` with the forced blocks on in both actions;
        ``predictions``: ``prediction`` / ``baseline_prediction``, passed on."""
        return self.env.step_with_baseline(self.actions(actions), self.actions(baseline), **predictions)

    def score(self, keep: Any) -> Tensor:
        return self.env.score(self.actions(keep))

    def evaluate(self, keep: Any):
        return self.env.evaluate(self.actions(keep))


class MultiDiscreteKeep(gym.ActionWrapper, gym.utils.RecordConstructorArgs):
    """The keep mask as ``MultiDiscrete([2] * K)`` instead of ``MultiBinary(K)``: the same actions
    in a space that libraries without ``MultiBinary`` support (RLlib, skrl)."""

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)  # so that gym.make can remake it from its spec
        gym.ActionWrapper.__init__(self, env)
        if not isinstance(env.action_space, gym.spaces.MultiBinary):
            raise TypeError(f"MultiDiscreteKeep wraps a MultiBinary action space; got {env.action_space}")
        self.action_space = gym.spaces.MultiDiscrete([2] * int(env.action_space.n))

    def action(self, action: np.ndarray) -> np.ndarray:
        return np.asarray(action, dtype=np.int8)
