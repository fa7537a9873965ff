"""BlockDrop on CIFAR as a native vector environment: ``num_envs`` images per step, one batched
ResNet forward, tensors on the device in and out."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space
from torch import Tensor

from .task import BlockDropTask, Outcome, as_keep_mask, check_reset_options


class BlockDropVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` BlockDrop episodes at once; see :class:`blockdrop_env.env.BlockDropEnv` for
    the task, rewards and arguments, which are the same here.

    Differences from the single env:

    * observations, rewards, ``terminated``, ``truncated`` and the ``info`` entries are torch
      tensors on the env's device (wrap with :class:`blockdrop_env.sb3.SB3VecEnv` or Gymnasium's
      numpy wrappers for a numpy face); the observation is a copy (writing into it changes nothing
      the env scores), ``info`` entries and :attr:`images` are the env's own tensors (read only);
    * actions are (num_envs, K) tensors or arrays; a bool tensor on the device is used as it is,
      with no host synchronisation, other dtypes have their 0/1 values checked;
    * every episode ends each step, and the autoreset is ``AutoresetMode.SAME_STEP``: ``step``
      returns the next images at once, the finished ones in ``info["final_obs"]``;
    * ``reset(options={"index": idx})`` with ``num_envs`` indices shows those images (to walk the
      test split in order);
    * ``score(keep)`` returns the (num_envs,) rewards that ``keep`` would get on the current images;
      ``step_with_baseline(actions, keep)`` steps and also scores ``keep`` on the same images in the
      same forward (``info["baseline_reward"]``);
    * ``privileged_labels()`` gives the current images' labels, for supervised terms and
      evaluation (not for acting).
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}
    autoreset_mode = AutoresetMode.SAME_STEP
    """Also as an attribute: some libraries (TorchRL) read it there rather than in ``metadata``."""

    def __init__(self, num_envs: int = 256, **task_kwargs: Any) -> None:
        if int(num_envs) != num_envs or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer; got {num_envs!r}")
        self.num_envs = int(num_envs)
        self.task = BlockDropTask(**task_kwargs)
        self.device = self.task.device
        self.num_blocks = self.task.num_blocks
        self.single_observation_space = spaces.Box(0, 255, (3, 32, 32), np.uint8)
        self.single_action_space = spaces.MultiBinary(self.num_blocks)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._generator = torch.Generator(self.device)
        self._generator.seed()
        self._indices: Tensor | None = None
        self._images: Tensor | None = None
        self._terminated = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        self._truncated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)

    @property
    def resnet(self) -> torch.nn.Module:
        """The env's ResNet (frozen, eval mode), for agents that need its gradients or features."""
        return self.task.resnet

    def privileged_labels(self) -> Tensor:
        """The labels of the current images (num_envs,) on the device: privileged information, not
        part of the observation. For supervised terms (the BlockDrop agent's joint finetuning adds
        the ResNet's cross-entropy) and for evaluation; an agent that acts must not read them."""
        self._require_images()
        return self.task.labels[self._indices]

    @property
    def images(self) -> Tensor:
        """The current observations (num_envs, 3, 32, 32) uint8 on the device."""
        return self._require_images()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Tensor, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._generator.manual_seed(int(seed))
        check_reset_options(options)
        if options and "index" in options:
            indices = self.task.check_indices(options["index"], self.num_envs)
        else:
            indices = self.task.draw(self.num_envs, self._generator)
        self._show(indices)
        return self._images.clone(), {"index": indices}

    def state_dict(self) -> dict[str, Tensor]:
        """What a resumed run needs to continue exactly: the generator of image draws and
        augmentation, and the current images (on the CPU)."""
        images = self._require_images()
        return {"generator": self._generator.get_state(), "indices": self._indices.cpu(), "images": images.cpu()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state["images"].shape != (self.num_envs, 3, 32, 32):
            raise ValueError(f"state holds {tuple(state['images'].shape)} images; this env shows {self.num_envs}")
        self._generator.set_state(state["generator"])
        self._indices = self.task.check_indices(state["indices"], self.num_envs)
        self._images = state["images"].to(self.device)

    def _show(self, indices: Tensor) -> None:
        self._indices = indices
        self._images = self.task.observe(indices, self._generator)

    def _require_images(self) -> Tensor:
        if self._images is None:
            raise ValueError("no images to act on: call reset() first")
        return self._images

    def evaluate(self, keep: Any) -> Outcome:
        """The full outcome (reward, prediction, ...) of ``keep`` on the current images."""
        images = self._require_images()
        return self.task.outcome(images, self.privileged_labels(), self._check(keep))

    def _check(self, keep: Any) -> Tensor:
        return as_keep_mask(keep, (self.num_envs,), self.num_blocks, self.device)

    def score(self, keep: Any) -> Tensor:
        """Rewards (num_envs,) that ``keep`` would get on the current images; nothing advances."""
        return self.evaluate(keep).reward

    def step(self, actions: Any) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        """Score ``actions`` on the current images and show the next ones (``SAME_STEP`` autoreset)."""
        images, labels = self._require_images(), self.privileged_labels()
        out = self.task.outcome(images, labels, self._check(actions))
        return self._advance(out, labels, {})

    def step_with_baseline(
        self,
        actions: Any,
        baseline: Any,
        *,
        prediction: Tensor | None = None,
        baseline_prediction: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        """``step(actions)``, also scoring ``baseline``, another (num_envs, K) action, on the same
        images: its rewards in ``info["baseline_reward"]``. A self-critical agent's greedy action:
        both are scored in one ResNet forward, the blocks they share before their first difference
        run once per image.

        ``prediction``: the (num_envs,) classes ``env.resnet`` predicts under ``actions`` on the
        current images, when the agent ran that forward itself (joint finetuning runs it with
        gradients for the cross-entropy); the env then scores them without a forward of its own.
        ``baseline_prediction``: the same for ``baseline``.
        """
        images, labels = self._require_images(), self.privileged_labels()
        keep, other = self._check(actions), self._check(baseline)
        if prediction is None and baseline_prediction is None:
            both = self.task.outcome(images, labels, torch.stack([keep, other]))
            out, baseline_reward = Outcome(*(field[0] for field in both)), both.reward[1]
        else:
            out = self.task.outcome(images, labels, keep, prediction)
            baseline_reward = self.task.outcome(images, labels, other, baseline_prediction).reward
        return self._advance(out, labels, {"baseline_reward": baseline_reward})

    def _advance(
        self, out: Outcome, labels: Tensor, extra: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        info: dict[str, Any] = {**out.info(labels), **extra, "index": self._indices, "final_obs": self._images}
        self._show(self.task.draw(self.num_envs, self._generator))  # SAME_STEP autoreset
        # A copy: an agent writing into its observation must not change the images the env scores.
        return self._images.clone(), out.reward, self._terminated, self._truncated, info
