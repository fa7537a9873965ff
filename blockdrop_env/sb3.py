"""A Stable-Baselines3 ``VecEnv`` face for :class:`BlockDropVectorEnv`.

The env computes on its device; this adapter hands SB3 numpy arrays with one device-to-host copy
per step (observations, finished observations, rewards and outcomes travel packed as one byte
buffer) and builds only the per-env ``infos`` that SB3 requires.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv
from torch import Tensor

from .task import as_keep_mask


def to_host(*tensors: Tensor) -> list[np.ndarray]:
    """Copy several device tensors to the host in one transfer, as numpy arrays of the same
    dtypes and shapes."""
    flat = [t.contiguous().view(-1).view(torch.uint8) for t in tensors]
    host = torch.cat(flat).cpu().numpy()
    out, offset = [], 0
    for t, f in zip(tensors, flat, strict=True):
        dtype = torch.empty((), dtype=t.dtype).numpy().dtype
        out.append(host[offset : offset + f.numel()].view(dtype).reshape(t.shape))
        offset += f.numel()
    return out


class SB3VecEnv(VecEnv):
    """SB3's ``VecEnv`` over a BlockDrop vector env (optionally wrapped, e.g. by the curriculum).

    ``infos[i]`` holds ``terminal_observation`` (every episode ends each step) and the outcome of
    the finished episode: ``correct``, ``blocks_kept``, ``label``.
    """

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        self.env = env
        self.base = env.unwrapped
        super().__init__(self.base.num_envs, self.base.single_observation_space, self.base.single_action_space)
        self._actions: Tensor | None = None
        self._dones = np.ones(self.num_envs, dtype=bool)

    def reset(self) -> np.ndarray:
        seed = self._seeds[0]
        options = self._options[0] or None
        obs, _ = self.env.reset(seed=seed, options=options)
        self._reset_seeds()
        self._reset_options()
        return obs.cpu().numpy()

    def step_async(self, actions: np.ndarray) -> None:
        # Checked on the host, where SB3's numpy actions are, then sent as one bool tensor.
        self._actions = as_keep_mask(actions, (self.num_envs,), self.base.num_blocks, torch.device("cpu"))

    def step_wait(self):
        if self._actions is None:
            raise ValueError("step_wait() without step_async(): call step(actions)")
        obs, rewards, _, _, info = self.env.step(self._actions.to(self.base.device, non_blocking=True))
        self._actions = None
        obs, final, rewards, correct, kept, label = to_host(
            obs, info["final_obs"], rewards, info["correct"], info["blocks_kept"], info["label"]
        )
        infos = [
            {
                "terminal_observation": final[i],
                "TimeLimit.truncated": False,
                "correct": bool(correct[i]),
                "blocks_kept": int(kept[i]),
                "label": int(label[i]),
            }
            for i in range(self.num_envs)
        ]
        return obs, rewards, self._dones.copy(), infos

    def close(self) -> None:
        self.env.close()

    def _indices(self, indices: Any) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else list(indices)

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        value = getattr(self.base, attr_name)
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        setattr(self.base, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: Any = None, **method_kwargs) -> list[Any]:
        result = getattr(self.base, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        wrapped, env = False, self.env
        while isinstance(env, gym.vector.VectorWrapper):
            wrapped |= isinstance(env, wrapper_class)
            env = env.env
        return [wrapped for _ in self._indices(indices)]
