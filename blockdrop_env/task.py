"""What the single and the vector env share: images and labels resident on the device, the frozen
ResNet, and the few batched functions of the bandit (draw images, check actions, score them).

Every function here works on whole batches of tensors on the task's device and never waits on the
device, except :func:`as_keep_mask` on non-bool actions (it must look at their values to refuse
bad ones; pass a bool tensor to skip that) and the index checks of ``reset(options=...)``.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .checkpoint import load_resnet
from .choices import check_choice
from .data import LAYOUTS, SPLITS, load_cifar, random_crop_flip
from .device import Precision, resolve_device
from .inference import PLAIN, CompileMode, ForwardOptions, FusedKernels, MaskedPredictor
from .resnet import CifarResNet
from .reward import blockdrop_reward


class Outcome(NamedTuple):
    """What running the ResNet under a keep mask gave, one entry per image."""

    reward: Tensor  # float32
    prediction: Tensor  # int64 class
    correct: Tensor  # bool
    blocks_kept: Tensor  # int64
    flops: Tensor  # float64, FLOPs of the ResNet blocks run plus its stem and classifier

    def info(self, label: Tensor) -> dict[str, Tensor]:
        """The ``info`` entries of a step: every field but the reward (which the step returns
        itself: an info key named like it lands on top of it in libraries that merge the two, such
        as TorchRL), and the label."""
        fields = self._asdict()
        del fields["reward"]
        return {"label": label, **fields}


def as_keep_mask(action: Any, batch_shape: tuple[int, ...], num_blocks: int, device: torch.device) -> Tensor:
    """Check an action and return it as a bool keep mask on ``device``.

    Takes numpy arrays, sequences or tensors of bool, integer or float dtype whose values are
    exactly 0 or 1; anything else raises a ValueError that says what was expected.
    """
    expected = (*batch_shape, num_blocks)
    if isinstance(action, Tensor):
        keep = action
    else:
        array = np.ascontiguousarray(action)  # also takes reversed or strided views
        if array.dtype.kind not in "biuf":
            raise ValueError(f"action must hold 0/1 numbers of shape {expected}; got dtype {array.dtype}")
        keep = torch.from_numpy(array)
    if tuple(keep.shape) != expected:
        raise ValueError(f"action must have shape {expected} (1 = run the block); got {tuple(keep.shape)}")
    if keep.dtype == torch.bool:
        return keep.to(device, non_blocking=True)
    if keep.is_complex():
        raise ValueError(f"action must hold 0/1 numbers; got dtype {keep.dtype}")
    bad = (keep != 0) & (keep != 1)  # NaN compares unequal to both
    if bad.any():
        raise ValueError(f"action values must be 0 or 1; got {keep[bad].flatten()[:5].tolist()}")
    return (keep == 1).to(device, non_blocking=True)


RESET_OPTIONS = ("index",)


def check_reset_options(options: dict[str, Any] | None) -> None:
    """Refuse ``reset`` options the envs do not know (a misspelt ``"index"`` would be ignored)."""
    unknown = sorted(set(options or {}) - set(RESET_OPTIONS))
    if unknown:
        raise ValueError(f"unknown reset option(s) {unknown}: the only option is 'index' (image indices to show)")


class BlockDropTask:
    """A CIFAR split and a pretrained ResNet on one device, and the bandit's batched functions.

    Args:
        split: "train" (45,000 images), "val" (the 5,000 held out of the train files for choosing
            epochs and settings), "trainval" (all 50,000) or "test" (10,000); see
            ``blockdrop_env.data``.
        penalty: reward of a wrong prediction (the paper's gamma); a finite number <= 0, so that
            a wrong answer never earns more than a right one.
        device: "auto" (CUDA when present), "cpu", "cuda", ...
        data_dir: folder holding the CIFAR batches (default: see ``blockdrop_env.data``).
        checkpoint: ResNet checkpoint path (default: the one shipped with the package), or a
            :class:`CifarResNet` to use as it is (envs that share it see the same weights, as
            joint finetuning needs).
        augment: random crop and flip of drawn images; default: on for "train" and "trainval", off
            for "val" and "test".
        dataset: "cifar10" or "cifar100".
        depth: depth of the ResNet in the checkpoint.
        download: fetch CIFAR with torchvision when it is not found.
        limit: use only the first ``limit`` images of the split (smoke runs, tests).
        plain: score with the plain fp32 forward (the reference the optimised one is checked
            against; see ``blockdrop_env.inference``).
        compile: a ``torch.compile`` mode for the ResNet forward ("max-autotune-no-cudagraphs"
            is the fastest measured on an H200), or None (default) for eager: compiling takes a
            minute or more at the first step of each batch size.
        fused: run the residual blocks as fused Triton kernels, "one" or "two" per block (CUDA;
            ``blockdrop_env.fused_blocks``), or None (default) as torch operations.
        precision: "auto" (default): the device's fastest forward that keeps the fp32 rewards
            (fp16 on CUDA, bf16 on CPUs with native bf16, else fp32); "fp32": fp32 throughout.
        forward: every option of the forward at once (precision, chunking, ...); instead of
            ``plain``, ``compile``, ``fused`` and ``precision``.
    """

    def __init__(
        self,
        split: str = "train",
        penalty: float = -1.0,
        device: str | torch.device = "auto",
        data_dir: str | os.PathLike | None = None,
        checkpoint: str | os.PathLike | CifarResNet | None = None,
        augment: bool | None = None,
        dataset: str = "cifar10",
        depth: int = 32,
        download: bool = False,
        limit: int | None = None,
        plain: bool = False,
        compile: CompileMode | None = None,
        fused: FusedKernels | None = None,
        precision: Precision = "auto",
        forward: ForwardOptions | None = None,
    ) -> None:
        check_choice("split", split, SPLITS)
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float, np.integer, np.floating)):
            raise ValueError(f"penalty must be a number <= 0; got {penalty!r}")
        if not np.isfinite(penalty) or penalty > 0:
            raise ValueError(f"penalty must be a finite number <= 0 (the reward of a wrong answer); got {penalty!r}")
        check_choice("dataset", dataset, LAYOUTS)
        if sum(map(bool, (plain, compile or fused or precision != "auto", forward))) > 1:
            raise ValueError(
                "pass one of plain=True (the reference), compile/fused/precision, or forward=ForwardOptions(...)"
            )
        self.device = resolve_device(device)
        self.split = split
        self.penalty = float(penalty)
        if augment is not None and not isinstance(augment, (bool, np.bool_)):
            raise ValueError(f"augment must be None, True or False; got {augment!r}")
        self.augment = split in ("train", "trainval") if augment is None else bool(augment)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
            raise ValueError(f"limit must be None or a positive integer number of images; got {limit!r}")
        images, labels = load_cifar(split, data_dir, dataset, download)
        if limit is not None and limit < len(labels):  # a copy: a view would keep the whole split alive
            images, labels = images[:limit].clone(), labels[:limit].clone()
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.resnet: CifarResNet
        if isinstance(checkpoint, CifarResNet):
            self.resnet, self.checkpoint_meta = checkpoint.to(self.device), {}
        else:
            self.resnet, self.checkpoint_meta = load_resnet(
                checkpoint, depth, LAYOUTS[dataset].num_classes, self.device
            )
            self.resnet.requires_grad_(False)
        self.predict = MaskedPredictor(
            self.resnet,
            forward or (PLAIN if plain else ForwardOptions.for_device(self.device, compile, fused, precision)),
        )

    @property
    def num_images(self) -> int:
        return len(self.labels)

    @property
    def num_blocks(self) -> int:
        return self.resnet.num_blocks

    def check_indices(self, index: Any, size: int) -> Tensor:
        """Image indices from ``reset(options={"index": ...})``, checked, as a tensor on the device."""
        if isinstance(index, Tensor):
            idx = index
        else:
            array = np.asarray(index)
            if array.dtype.kind not in "biuf":
                raise ValueError(f"options['index'] must be integer image indices; got {index!r}")
            idx = torch.as_tensor(array.astype(np.int64) if array.dtype.kind in "iu" else array)
        if idx.shape != (size,) and not (size == 1 and idx.ndim == 0):
            raise ValueError(f"options['index'] must hold {size} image indices; got shape {tuple(idx.shape)}")
        if idx.is_floating_point() or idx.dtype == torch.bool or idx.is_complex():
            raise ValueError(f"options['index'] must be integers; got dtype {idx.dtype}")
        idx = idx.reshape(size).long()
        if ((idx < 0) | (idx >= self.num_images)).any():
            raise ValueError(f"options['index'] must lie in [0, {self.num_images}); got {idx.tolist()[:8]}")
        return idx.to(self.device)

    def draw(self, size: int, generator: torch.Generator) -> Tensor:
        """``size`` image indices drawn uniformly with replacement."""
        return torch.randint(self.num_images, (size,), device=self.device, generator=generator)

    def observe(self, indices: Tensor, generator: torch.Generator) -> Tensor:
        """The images at ``indices`` (uint8), augmented when the task augments."""
        images = self.images[indices]
        return random_crop_flip(images, generator) if self.augment else images

    @torch.no_grad()
    def outcome(self, images: Tensor, labels: Tensor, keep: Tensor, prediction: Tensor | None = None) -> Outcome:
        """Run the ResNet under ``keep`` (bool, (B, K)) and score the predictions.

        ``keep`` may also stack M actions, (M, B, K), all on the same B images, every Outcome field
        then (M, B): two actions run the blocks they share before their first difference once
        (:meth:`MaskedPredictor.pair`), more run as one forward of M*B images. ``prediction``: the
        classes the ResNet predicts under ``keep``, when the caller already ran that forward (joint
        finetuning runs it with gradients); then no forward runs here.
        """
        actions = keep.shape[:-1]
        flat_keep = keep.reshape(-1, keep.shape[-1])
        if prediction is None and keep.ndim == 3 and keep.shape[0] == 2:
            prediction = self.predict.pair(images, keep[0], keep[1])
        elif prediction is None:
            flat_images = images.expand(keep.shape[0], *images.shape).flatten(0, 1) if keep.ndim == 3 else images
            prediction = self.predict(flat_images, flat_keep).view(actions)
        elif prediction.shape != actions or prediction.is_floating_point():
            raise ValueError(
                f"prediction must hold {tuple(actions)} class indices; got {prediction.dtype} {tuple(prediction.shape)}"
            )
        labels = labels.expand(actions)
        correct = prediction == labels
        blocks_kept = keep.sum(-1)
        reward = blockdrop_reward(correct, blocks_kept, self.num_blocks, self.penalty)
        return Outcome(reward, prediction, correct, blocks_kept, self.resnet.flops(flat_keep).view(actions))
