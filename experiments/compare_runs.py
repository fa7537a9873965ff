"""Saving and reusing comparison runs: the settings a run records, the finished run's JSON that a
later comparison under the same name reuses, and the resume file of a run in progress.

A run's JSON and resume file record :func:`run_settings`; a comparison run again reuses a finished
run (or continues an unfinished one) only when they match, refuses it when they differ, and starts
it again with ``--overwrite``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from blockdrop_env.checkpoint import atomic_save, load_checkpoint
from blockdrop_env.device import resolve_device, training_dtype
from experiments.cli import UsageError, remove_stale_temporaries

if TYPE_CHECKING:
    from experiments.compare import Args
    from experiments.compare_training import Recorder


RUN_SETTINGS = (
    "env_steps num_envs penalty curriculum curriculum_fraction eval_points eval_limit limit checkpoint"
).split()
"""The arguments that change what a run computes: a finished run is reused only when they match."""


def run_settings(args: Args) -> dict[str, str]:
    """What a run computes with: the arguments of :data:`RUN_SETTINGS`, and the device type and
    precision ``--device`` and ``--precision`` resolve to here (recorded resolved, because "auto"
    means bf16 on one machine and fp32 on another: a sweep that moves machines must not mix them)."""
    device = resolve_device(args.device)
    bf16 = training_dtype(device, args.precision) == torch.bfloat16
    return {k: str(getattr(args, k)) for k in RUN_SETTINGS} | {
        "device": device.type,
        "precision": "bf16" if bf16 else "fp32",
    }


def same_settings(path: Path, recorded: dict[str, str], args: Args) -> bool:
    """Whether a run recorded in ``path`` ran with the settings of ``args``; a UsageError when they
    differ, unless ``--overwrite`` (then False: the run starts again)."""
    settings = run_settings(args).items()
    differ = [f"{k}: {recorded.get(k, 'not recorded')} -> {v}" for k, v in settings if recorded.get(k) != v]
    if differ and not args.overwrite:
        raise UsageError(
            f"{path} ran with other settings ({'; '.join(differ)}): "
            "choose another --name, or --overwrite to run it again"
        )
    return not differ


def reusable(path: Path, args: Args) -> dict | None:
    """The finished run at ``path`` when its settings match ``args``; None when there is none (or
    ``--overwrite`` replaces a differing one); a UsageError when they differ."""
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    return result if same_settings(path, result.get("settings", {}), args) else None


def resume_path(runs_dir: Path, algo: str, seed: int) -> Path:
    return runs_dir / f"{algo}_seed{seed}.resume.pt"


def global_rng_state() -> dict:
    """The global generators (torch, numpy, random) that SB3 samples actions and minibatches from."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "random": random.getstate(),
    }


def set_global_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["random"])


class RunSaver:
    """A run in progress in its resume file: saved every ``--save-every`` env steps, loaded when the
    run starts again with the same settings. It holds what the run's future depends on: the
    learner (parameters, optimizer, its generator), the training env (image draws, current images),
    the global generators, the evaluations so far and the training seconds spent."""

    def __init__(self, path: Path, args: Args) -> None:
        self.path, self.args = path, args
        remove_stale_temporaries(path)
        self.state = load_resume(path, args)
        # The run starts from the env steps done at its last save (0: a new run).
        self.start = self.saved_at = 0 if self.state is None else self.state["env_steps"]

    def restore(self, train_env, recorder: Recorder) -> dict | None:
        """Put the training env, the global generators and ``recorder`` back as saved (after the
        learner is built: building it seeds the generators); the learner's saved state, or None."""
        if self.state is None:
            return None
        train_env.unwrapped.load_state_dict(self.state["env"])
        set_global_rng_state(self.state["rng"])
        recorder.load_state_dict(self.state["recorder"])
        return self.state["learner"]

    def maybe_save(self, env_steps: int, train_env, recorder: Recorder, learner: Callable[[], dict]) -> None:
        """Save when ``--save-every`` env steps have passed since the last save and the run is not
        over (its JSON takes over then)."""
        every = self.args.save_every
        if every and env_steps - self.saved_at >= every and env_steps < self.args.env_steps:
            state = {
                "env_steps": env_steps,
                "settings": run_settings(self.args),
                "learner": learner(),
                "env": train_env.unwrapped.state_dict(),
                "rng": global_rng_state(),
                "recorder": recorder.state_dict(),
            }
            atomic_save(state, self.path)
            self.saved_at = env_steps


def load_resume(path: Path, args: Args) -> dict | None:
    """The saved state of an unfinished run at ``path`` when its settings match ``args``; None
    when there is none (or ``--overwrite`` starts a differing one again); a UsageError when they
    differ."""
    if not path.is_file():
        return None
    state = load_checkpoint(path, "env_steps", "comparison run resume file")
    return state if same_settings(path, state["settings"], args) else None
