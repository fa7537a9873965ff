"""BlockDrop on CIFAR as a one-step Gymnasium environment (a contextual bandit)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from .task import BlockDropTask, as_keep_mask, check_reset_options


class ResetNeeded(ValueError, gym.error.ResetNeeded):
    """``step`` or ``score`` called with no image to act on: call ``reset()`` first."""


class BlockDropEnv(gym.Env[np.ndarray, np.ndarray]):
    """
    ## Description

    BlockDrop (Wu et al., CVPR 2018) as reinforcement learning. Each episode shows one CIFAR
    image; the agent chooses which of the K residual blocks of a pretrained ResNet (K = 15 for
    ResNet-32) to run on it. The ResNet then classifies the image with only those blocks: a
    dropped block passes its input through its shortcut. The agent is rewarded for being right
    with few blocks. One image, one K-bit action, one reward: a contextual bandit.

    ## Action Space

    ``MultiBinary(K)``: ``keep[k] = 1`` runs block k, 0 skips it. Bool, integer or float arrays
    are accepted if every value is exactly 0 or 1.

    ## Observation Space

    ``Box(0, 255, (3, 32, 32), uint8)``: the raw image, channels first. Normalisation is the
    ResNet's business, not the observation's. With ``augment`` the image is randomly cropped
    (after 4-pixel zero padding) and flipped, as in the paper's training.

    ## Rewards

    ``1 - (blocks_kept / K) ** 2`` when the ResNet's prediction with the chosen blocks is right,
    else ``penalty`` (the paper's gamma: -1 in curriculum learning, -5 or -10 in finetuning).
    ``score(keep)`` gives the reward an action would get on the current image without ending the
    episode (the self-critical baseline needs it).

    ## Starting State

    A uniformly drawn image of the split; ``reset(options={"index": i})`` shows image i.

    ## Episode End

    Every episode ends after one step: ``terminated=True``, ``truncated=False``. ``info`` holds
    ``label``, ``prediction``, ``correct``, ``blocks_kept``, ``flops`` (of the ResNet as run) and
    ``index``.

    ## Arguments

    Those of :class:`blockdrop_env.task.BlockDropTask`, and ``render_mode`` (None or "rgb_array").

    ```python
    import blockdrop_env, gymnasium as gym
    env = gym.make("BlockDrop-CIFAR10-R32", split="train", penalty=-1.0, device="auto",
                   data_dir=None, checkpoint=None, augment=None)
    ```

    * ``split``: "train" (45,000 images), "val" (5,000 held out of the train files: choose
      epochs and settings on it), "trainval" (all 50,000) or "test" (10,000).
    * ``penalty``: reward of a wrong prediction.
    * ``device``: where the data and ResNet live; "auto" picks CUDA when present.
    * ``data_dir``: folder holding ``cifar-10-batches-py/``; default: ``$BLOCKDROP_DATA_DIR``,
      then the places in ``blockdrop_env.data.default_data_dirs()``.
    * ``checkpoint``: ResNet checkpoint; default: the one shipped with the package. A
      ``CifarResNet`` module is used as it is (shared, e.g. with a finetuning agent).
    * ``augment``: random crop and flip; default: on for "train" and "trainval", off for "val"
      and "test".
    * ``download``: fetch CIFAR-10 with torchvision when it is not found (default False).
    * ``limit``: use only the first ``limit`` images of the split.
    * ``dataset``, ``depth``: another CIFAR variant or ResNet depth, with a matching checkpoint.
    * ``plain``, ``compile``, ``fused``: how the ResNet forward runs (``blockdrop_env.inference``):
      the plain fp32 reference, a ``torch.compile`` mode, or fused Triton blocks ("one"/"two");
      by default the device's fastest eager forward.
    * ``precision``: "auto" (fp16 on CUDA, bf16 on CPUs with native bf16, else fp32) or "fp32".
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 1}

    def __init__(self, *, render_mode: str | None = None, **task_kwargs: Any) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'rgb_array'; got {render_mode!r}")
        self.render_mode = render_mode
        self.task = BlockDropTask(**task_kwargs)
        self.num_blocks = self.task.num_blocks
        self.observation_space = spaces.Box(0, 255, (3, 32, 32), np.uint8)
        self.action_space = spaces.MultiBinary(self.num_blocks)
        self._generator = torch.Generator(self.task.device)
        self._generator.seed()
        self._image: Tensor | None = None  # (1, 3, 32, 32) on the device; None between episodes
        self._last_image: Tensor | None = None
        self._index = -1

    @property
    def resnet(self) -> torch.nn.Module:
        """The env's ResNet (frozen, eval mode), for agents that need its gradients or features."""
        return self.task.resnet

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._generator.manual_seed(int(self.np_random.integers(2**62)))
        check_reset_options(options)
        if options and "index" in options:
            index = self.task.check_indices(options["index"], 1)
        else:
            index = torch.as_tensor([int(self.np_random.integers(self.task.num_images))], device=self.task.device)
        self._index = int(index[0])
        self._image = self.task.observe(index, self._generator)
        return self._image[0].to("cpu", copy=True).numpy(), {"index": self._index}

    def _outcome(self, keep: Any):
        if self._image is None:
            raise ResetNeeded("the episode is over or never started: call reset() before step() or score()")
        mask = as_keep_mask(keep, (), self.num_blocks, self.task.device)[None]
        return self.task.outcome(self._image, self.task.labels[self._index : self._index + 1], mask)

    def score(self, keep: Any) -> float:
        """The reward ``keep`` would get on the current image; the episode goes on."""
        return float(self._outcome(keep).reward[0])

    def step(self, keep: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        out = self._outcome(keep)
        obs = self._image[0].to("cpu", copy=True).numpy()
        self._last_image, self._image = self._image, None  # one step per episode
        label = self.task.labels[self._index : self._index + 1]
        info = {name: value[0].item() for name, value in out.info(label).items()}
        info["index"] = self._index
        return obs, float(out.reward[0]), True, False, info

    def render(self) -> np.ndarray | None:
        image = self._image if self._image is not None else self._last_image
        if self.render_mode != "rgb_array" or image is None:
            return None
        return image[0].permute(1, 2, 0).cpu().numpy()
