"""The training loops of a comparison run: the paper's BlockDrop agent and the SB3 algorithms on
the same env, budget and evaluations, each saved in progress and continued exactly
(:mod:`experiments.compare_runs`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from tqdm import tqdm

from agents.evaluation import Policy, evaluate, make_eval_env
from agents.policy import PolicyNet
from agents.reinforce import BlockDropAgent, ReinforceConfig, make_optimizer, train_step
from agents.sb3 import greedy_policy, make_algorithm
from blockdrop_env.sb3 import SB3VecEnv
from blockdrop_env.vector_env import BlockDropVectorEnv
from blockdrop_env.wrappers import CurriculumVectorWrapper, curriculum_decided
from experiments.compare_runs import RunSaver, resume_path, run_settings

if TYPE_CHECKING:
    from experiments.compare import Args


def decided_at(env_steps: int, args: Args, num_blocks: int) -> int:
    """Blocks the agent decides after ``env_steps`` under the compare curriculum: one block more
    every ``1 / K`` of the curriculum's span (``curriculum_fraction`` of the run)."""
    span = max(1.0, args.curriculum_fraction * args.env_steps)
    return curriculum_decided(num_blocks * env_steps / span, num_blocks)


class Recorder:
    """Evaluates at the planned env-step marks and keeps the training clock free of evaluation;
    shows the run's progress in env steps."""

    def __init__(self, args: Args, test_env: BlockDropVectorEnv, policy_flops: float = 0.0, name: str = "") -> None:
        self.args, self.test_env, self.policy_flops = args, test_env, policy_flops
        self.marks = [round(args.env_steps * (i + 1) / args.eval_points) for i in range(args.eval_points)]
        self.curve: list[dict] = []
        self.eval_seconds = 0.0
        self.started = time.perf_counter()
        self.bar = tqdm(total=args.env_steps, desc=name, unit="env step", leave=False, position=1)

    def train_seconds(self) -> float:
        """Seconds of training so far (across interruptions), evaluations excluded."""
        return time.perf_counter() - self.started - self.eval_seconds

    def state_dict(self) -> dict:
        return {
            "marks": list(self.marks),
            "curve": list(self.curve),
            "eval_seconds": self.eval_seconds,
            "train_seconds": self.train_seconds(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.marks, self.curve, self.eval_seconds = list(state["marks"]), list(state["curve"]), state["eval_seconds"]
        # Backdated so that train_seconds() goes on from the saved figure.
        self.started = time.perf_counter() - state["train_seconds"] - self.eval_seconds

    def maybe_evaluate(self, env_steps: int, policy: Policy) -> None:
        self.bar.update(min(env_steps, self.bar.total) - self.bar.n)
        while self.marks and env_steps >= self.marks[0]:
            self.marks.pop(0)
            t0 = time.perf_counter()
            ev = evaluate(self.test_env, policy, self.policy_flops).summary()
            self.eval_seconds += time.perf_counter() - t0
            self.curve.append({"env_steps": env_steps, **ev})


def make_envs(args: Args, seed: int):
    common = dict(
        device=args.device,
        data_dir=args.data_dir,
        checkpoint=args.checkpoint,
        **args.env_forward(),
    )
    # trainval: the committed comparisons trained on all 50,000 images; nothing here is chosen on a walk.
    train = BlockDropVectorEnv(
        num_envs=args.num_envs, split="trainval", penalty=args.penalty, limit=args.limit, **common
    )
    train.reset(seed=seed)
    test = make_eval_env("test", limit=args.eval_limit, penalty=args.penalty, **common)
    return (CurriculumVectorWrapper(train, 1) if args.curriculum else train), test


def run_blockdrop(args: Args, seed: int, train_env, recorder: Recorder, saver: RunSaver) -> None:
    torch.manual_seed(seed)
    agent = BlockDropAgent(device=train_env.unwrapped.device, compile=args.compile, precision=args.precision)
    recorder.policy_flops = agent.policy.flops()
    config = ReinforceConfig()
    optimizer = make_optimizer(agent, train_env, config)
    generator = torch.Generator(agent.device).manual_seed(seed)
    saved = saver.restore(train_env, recorder)
    if saved is not None:
        agent.policy.load_state_dict(saved["policy"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])

    def learner() -> dict:
        return {
            "policy": agent.policy.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
        }

    steps = math.ceil(args.env_steps / args.num_envs)
    for step in range(saver.start // args.num_envs, steps):
        if args.curriculum:
            train_env.decided = decided_at(step * args.num_envs, args, train_env.unwrapped.num_blocks)
        train_step(agent, train_env, optimizer, config, generator)
        done = (step + 1) * args.num_envs
        recorder.maybe_evaluate(done, agent.greedy)
        saver.maybe_save(done, train_env, recorder, learner)


class _SB3Hook(BaseCallback):
    """Sets the curriculum, evaluates at the marks, and saves the run between rollouts (where the
    rollout buffer is empty: the parameters, optimizer and generators are all there is)."""

    def __init__(self, args: Args, train_env, recorder: Recorder, saver: RunSaver, policy: Callable) -> None:
        super().__init__()
        self.args, self.train_env, self.recorder, self.saver, self.policy = args, train_env, recorder, saver, policy

    def _set_curriculum(self, env_steps: int) -> None:
        if self.args.curriculum:
            self.train_env.decided = decided_at(env_steps, self.args, self.train_env.unwrapped.num_blocks)

    def _on_training_start(self) -> None:
        self._set_curriculum(self.model.num_timesteps)  # a continued run starts part-way through it

    def _on_step(self) -> bool:
        self._set_curriculum(self.num_timesteps)
        self.recorder.maybe_evaluate(self.num_timesteps, self.policy)
        return True

    def _on_rollout_start(self) -> None:
        model = self.model
        self.saver.maybe_save(
            model.num_timesteps,
            self.train_env,
            self.recorder,
            lambda: {
                "policy": model.policy.state_dict(),
                "optimizer": model.policy.optimizer.state_dict(),
                "n_updates": model._n_updates,
            },
        )


def run_sb3(args: Args, algo: str, seed: int, train_env, recorder: Recorder, saver: RunSaver) -> None:
    model = make_algorithm(algo, SB3VecEnv(train_env), seed=seed, device=train_env.unwrapped.device)
    # The SB3 policies decide with the BlockDrop agent's ResNet-8 trunk and a K-wide head: same FLOPs.
    recorder.policy_flops = PolicyNet(train_env.unwrapped.num_blocks).flops()
    saved = saver.restore(train_env, recorder)
    if saved is not None:
        model.policy.load_state_dict(saved["policy"])
        model.policy.optimizer.load_state_dict(saved["optimizer"])
        model.num_timesteps, model._n_updates = saver.start, saved["n_updates"]
        # What learn() would hold after the last step: the images on show, every episode just ended.
        model._last_obs = train_env.unwrapped.images.cpu().numpy()
        model._last_episode_starts = np.ones(train_env.num_envs, dtype=bool)
    hook = _SB3Hook(args, train_env, recorder, saver, greedy_policy(model))
    model.learn(args.env_steps - saver.start, callback=hook, reset_num_timesteps=saved is None)


def run_one(args: Args, runs_dir: Path, algo: str, seed: int) -> dict:
    """One training run and its evaluations, as the per-run JSON records it; continued from its
    resume file in ``runs_dir`` when there is one."""
    saver = RunSaver(resume_path(runs_dir, algo, seed), args)
    train_env, test_env = make_envs(args, seed)
    recorder = Recorder(args, test_env, name=f"{algo} seed {seed}")
    if saver.start:
        tqdm.write(f"{algo} seed {seed}: continuing from its save at {saver.start} env steps")
    if algo == "blockdrop":
        run_blockdrop(args, seed, train_env, recorder, saver)
    else:
        run_sb3(args, algo, seed, train_env, recorder, saver)
    train_seconds = recorder.train_seconds()
    recorder.bar.close()
    result = {
        "algorithm": algo,
        "seed": seed,
        "env_steps": args.env_steps,
        "train_seconds": train_seconds,
        "env_steps_per_second": args.env_steps / train_seconds,
        "final": recorder.curve[-1],
        "curve": recorder.curve,
        "device": str(train_env.unwrapped.device),
        "settings": run_settings(args),
    }
    if saver.start:
        result["resumed_from"] = saver.start  # its train_seconds span the processes
    return result
