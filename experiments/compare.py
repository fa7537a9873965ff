"""Compare RL algorithms on the same BlockDrop env, budget and seeds.

    python -m experiments.compare --algorithms blockdrop ppo a2c trpo --seeds 0 1 2 --env-steps 200000
    python -m experiments.compare --name cpu-small --env-steps 8192 --limit 2048 --eval-limit 1000

Each (algorithm, seed) run is a Ray Tune trial (``experiments.sweep``): on a Ray started in this
process by default, or with ``--address`` on an existing cluster, ``--cpus-per-trial`` and
``--gpus-per-trial`` (fractions share a GPU) saying what each trial gets; ``--engine serial`` runs
them one after another in this process instead. Every run trains for the same number of env steps
(images) on the same env configuration (penalty, curriculum on or off), is evaluated on the test
split with the same evaluator during and after training, and records its wall-clock training time
(evaluations excluded) and env steps per second.

Results go to ``<out-root>/<name>/`` (default ``runs/compare/<name>/``): one JSON per run, written
as each run finishes, ``summary.json``, ``table.md`` (mean +- std over seeds), ``statistics.md``
(IQM with 95% bootstrap intervals, probability of improvement: ``experiments.comparison_stats``)
and plots. Each run's JSON records the settings it ran with; run again under the same name, a
finished run whose settings match is reused (so an interrupted sweep resumes; the reused runs are
listed), one whose settings differ is refused (``--overwrite`` runs it again). A run in progress is
saved every ``--save-every`` env steps to ``runs/<algorithm>_seed<seed>.resume.pt`` (one file per
run, overwritten, removed once its JSON is written): run again, an interrupted run continues from
its last save and ends as it would have without the interruption (same parameters, same draws).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from tqdm import tqdm

from agents.baselines import heuristic_policies
from agents.evaluation import Policy, evaluate, make_eval_env
from agents.policy import PolicyNet
from agents.reinforce import BlockDropAgent, ReinforceConfig, make_optimizer, train_step
from agents.sb3 import greedy_policy, make_algorithm
from blockdrop_env.checkpoint import atomic_save, atomic_write_text, load_checkpoint, run_metadata
from blockdrop_env.device import resolve_device, training_dtype
from blockdrop_env.sb3 import SB3VecEnv
from blockdrop_env.vector_env import BlockDropVectorEnv
from blockdrop_env.wrappers import CurriculumVectorWrapper, curriculum_decided
from experiments import comparison_stats, sweep
from experiments.cli import (
    DataArgs,
    UsageError,
    check_device,
    check_writable,
    cost_note,
    lock_folder,
    remove_stale_temporaries,
    require,
    require_penalty,
    require_positive,
    run,
)
from experiments.forward_args import ForwardArgs
from experiments.plotting import save_plot


@dataclass
class Args(DataArgs, ForwardArgs):
    algorithms: tuple[str, ...] = ("blockdrop", "ppo", "a2c", "trpo")
    """Algorithms to run: blockdrop (the paper's agent), ppo, a2c, trpo."""
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """Seeds; every algorithm runs once per seed (the statistics need several: five at least)."""
    bootstrap_reps: int = 2000
    """Bootstrap resamples of the confidence intervals."""
    engine: Literal["ray", "serial"] = "ray"
    """ray: every run a Ray Tune trial; serial: one run after another in this process."""
    address: str | None = None
    """Address of an existing Ray cluster (e.g. "ray://head:10001" or "auto"); default: a Ray started
    in this process. On a cluster, --data-dir and --checkpoint must exist on every node."""
    cpus_per_trial: float = 1.0
    """CPUs Ray gives each trial (its torch threads)."""
    gpus_per_trial: float | None = None
    """GPUs Ray gives each trial; fractions let small trials share one; default: 0.25 where this
    process sees a GPU, else 0."""
    env_steps: int = 200_000
    """Env steps (images) of training per run, the same for every algorithm."""
    num_envs: int = 256
    """Images per vector-env step."""
    penalty: float = -1.0
    """Reward of a wrong prediction."""
    curriculum: bool = False
    """Train under the curriculum wrapper: one more block handed to the agent every
    ``curriculum_fraction * env_steps / 15`` env steps."""
    curriculum_fraction: float = 0.5
    """Fraction of the budget over which the curriculum hands over all blocks."""
    eval_points: int = 5
    """Evaluations on the test split per run, evenly spread (the reward curves)."""
    eval_limit: int | None = None
    """Test images per evaluation (the first N); default: all 10,000."""
    limit: int | None = None
    """Train images (the first N); default: all 50,000."""
    name: str = "default"
    """Results go to <out-root>/<name>/."""
    out_root: Path = Path("runs/compare")
    """Parent folder of the results."""
    overwrite: bool = False
    """Run again, and replace, finished runs whose recorded settings differ from these."""
    save_every: int = 10_000
    """Env steps between saves of a run in progress (``runs/<algorithm>_seed<seed>.resume.pt``, one
    file per run, overwritten): an interrupted run goes on from its last save. 0: no saves."""
    checkpoint: Path | None = None
    """ResNet checkpoint; default: the shipped one."""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda."""


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


def check_args(args: Args) -> None:
    known = ("blockdrop", "ppo", "a2c", "trpo")
    require(bool(args.algorithms) and set(args.algorithms) <= set(known), f"--algorithms must be among {known}")
    require(bool(args.seeds), "--seeds needs at least one seed")
    require(len(set(args.seeds)) == len(args.seeds), f"--seeds must differ (each counts as a run); got {args.seeds}")
    require(min(args.seeds) >= 0, f"--seeds must be >= 0; got {args.seeds}")
    require(len(set(args.algorithms)) == len(args.algorithms), f"--algorithms must differ; got {args.algorithms}")
    require(
        args.name not in ("", ".", "..") and "/" not in args.name and "\\" not in args.name,
        f"--name must be a folder name inside --out-root (no '/', not '.' or '..'); got {args.name!r}",
    )
    require_positive(args, "env_steps", "num_envs", "eval_points", "eval_limit", "limit")
    require(
        args.env_steps >= args.num_envs,
        f"--env-steps must be at least --num-envs (one step shows --num-envs images); "
        f"got {args.env_steps} and {args.num_envs}",
    )
    require(args.save_every >= 0, f"--save-every must be 0 (no saves) or positive; got {args.save_every}")
    require_positive(args, "bootstrap_reps")
    require_penalty(args, "penalty")
    fraction = args.curriculum_fraction
    require(0 < fraction <= 1, f"--curriculum-fraction must lie in (0, 1]; got {fraction}")


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


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.4f} +- {np.std(values):.4f}"


def table(results: list[dict], algorithms: tuple[str, ...]) -> str:
    lines = [
        "| algorithm | seeds | test reward | accuracy (%) | blocks kept | GFLOPs | train s | env steps/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for algo in algorithms:
        rs = [r for r in results if r["algorithm"] == algo]
        if not rs:
            continue
        f = [r["final"] for r in rs]
        lines.append(
            f"| {algo} | {len(rs)} | {mean_std([x['reward_mean'] for x in f])} "
            f"| {np.mean([100 * x['accuracy'] for x in f]):.2f} +- {np.std([100 * x['accuracy'] for x in f]):.2f} "
            f"| {np.mean([x['blocks_mean'] for x in f]):.2f} +- {np.std([x['blocks_mean'] for x in f]):.2f} "
            f"| {np.mean([x['flops_mean'] / 1e9 for x in f]):.4f} "
            f"| {np.mean([r['train_seconds'] for r in rs]):.1f} "
            f"| {np.mean([r['env_steps_per_second'] for r in rs]):.0f} |"
        )
    return "\n".join(lines) + "\n"


def plots(results: list[dict], algorithms: tuple[str, ...], heuristics: list[dict], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for algo in algorithms:
        rs = [r for r in results if r["algorithm"] == algo]
        if rs:
            steps = [p["env_steps"] for p in rs[0]["curve"]]
            rewards = np.array([[p["reward_mean"] for p in r["curve"]] for r in rs])
            ax.errorbar(steps, rewards.mean(0), yerr=rewards.std(0), marker="o", ms=3, capsize=2, label=algo)
    save_plot(fig, ax, "env steps", "test reward (greedy)", out / "reward_vs_env_steps.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for prefix, style in (("FirstK", "o-"), ("RandomK", "s-")):
        pts = [h for h in heuristics if h["name"].startswith(prefix)]
        if not pts:
            continue
        ax.plot(
            [h["blocks_mean"] for h in pts], [100 * h["accuracy"] for h in pts], style, ms=3, label=prefix, alpha=0.6
        )
    for algo in algorithms:
        f = [r["final"] for r in results if r["algorithm"] == algo]
        if f:
            ax.scatter([x["blocks_mean"] for x in f], [100 * x["accuracy"] for x in f], s=30, label=algo, zorder=3)
    save_plot(fig, ax, "blocks kept (mean)", "test accuracy (%)", out / "accuracy_vs_blocks.png")


def write_report(
    results: list[dict], algorithms: tuple[str, ...], heuristics: list[dict], out: Path, reps: int
) -> dict:
    """Write ``table.md`` (mean +- std), ``statistics.md`` (IQM with intervals, probability of
    improvement), ``iqm_reward.png`` and the plots of :func:`plots` for ``results`` grouped by their
    "algorithm" (in the order of ``algorithms``) into ``out``; print the tables; return the
    statistics as the summaries record them."""
    md = table(results, algorithms)
    (out / "table.md").write_text(md)
    scores = {a: np.array([r["final"]["reward_mean"] for r in results if r["algorithm"] == a]) for a in algorithms}
    iqm = comparison_stats.iqm_intervals(scores, reps)
    improvement = comparison_stats.improvement_probabilities(scores, reps)
    stats_md = comparison_stats.markdown(scores, iqm, improvement)
    (out / "statistics.md").write_text(stats_md)
    comparison_stats.plot(iqm, out / "iqm_reward.png")
    plots(results, algorithms, heuristics, out)
    print(md)
    print(stats_md)
    return {
        "iqm": {a: dict(zip(("point", "low", "high"), v, strict=True)) for a, v in iqm.items()},
        "probability_of_improvement": [
            {"x": x, "y": y, "point": p, "low": lo, "high": hi} for (x, y), (p, lo, hi) in improvement.items()
        ],
    }


def run_serially(jobs: list[tuple[str, int]], run: Callable[[str, int], dict], keep: Callable[[dict], None]) -> None:
    """The runs one after another in this process, saying after each algorithm's first run what
    the rest will cost."""
    seconds: dict[str, float] = {}  # per run, per algorithm, as measured here
    for i, (algo, seed) in enumerate(tqdm(jobs, desc="compare", unit="run")):
        t0 = time.perf_counter()
        result = run(algo, seed)
        keep(result)
        if algo not in seconds and "resumed_from" not in result:  # a whole run measures the rest
            seconds[algo] = time.perf_counter() - t0
            left = [a for a, _ in jobs[i + 1 :]]
            unmeasured = sorted({a for a in left if a not in seconds})
            cost_note(
                sum(seconds.get(a, seconds[algo]) for a in left),
                f"the {len(left)} runs left"
                + (f" (counting {', '.join(unmeasured)} at {algo}'s speed until measured)" if unmeasured else ""),
                "ask for less with --env-steps, --seeds, --algorithms or --limit (finished runs are kept)",
            )


def main(args: Args) -> list[dict]:
    check_args(args)
    check_device(args.device)
    comparison_stats.rliable_modules()  # the statistics come last: their package must be there first
    if args.engine == "ray":
        sweep.ray_modules()
    out = args.out_root / args.name
    runs_dir = (out / "runs").resolve()  # absolute: Ray trials may run in another working directory
    check_writable(out / "runs")
    lock_folder(out)  # a second comparison under this name waits for none: it is refused
    args.fetch_data()
    jobs = [(algo, seed) for algo in args.algorithms for seed in args.seeds]
    finished = {job: reusable(out / "runs" / f"{job[0]}_seed{job[1]}.json", args) for job in jobs}  # checked first
    reused = [f"{algo} seed {seed}" for (algo, seed), r in finished.items() if r is not None]
    if reused:
        print(f"reusing {len(reused)} finished run(s) with the same settings from {out / 'runs'}: {', '.join(reused)}")
    pending = [job for job in jobs if finished[job] is None]
    for algo, seed in pending:  # settings of unfinished runs checked before any run starts
        load_resume(resume_path(runs_dir, algo, seed), args)
    run = partial(run_one, args, runs_dir)

    def keep(result: dict) -> None:
        """A finished run: its JSON written at once (a run counts as done once this exists)."""
        algo, seed = result["algorithm"], result["seed"]
        atomic_write_text(out / "runs" / f"{algo}_seed{seed}.json", json.dumps(result, indent=2) + "\n")
        resume_path(runs_dir, algo, seed).unlink(missing_ok=True)
        finished[algo, seed] = result
        final = result["final"]
        tqdm.write(
            f"{algo} seed {seed}: reward {final['reward_mean']:.4f} acc {final['accuracy']:.4f} "
            f"blocks {final['blocks_mean']:.2f} {result['env_steps_per_second']:.0f} env steps/s"
        )

    if pending and args.engine == "ray":
        gpus = args.gpus_per_trial if args.gpus_per_trial is not None else 0.25 * torch.cuda.is_available()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        sweep.run_trials(pending, run, keep, out / "tune" / stamp, args.address, args.cpus_per_trial, gpus)
    elif pending:
        run_serially(pending, run, keep)
    results = [finished[job] for job in jobs]
    _, test_env = make_envs(args, 0)
    heuristics = [
        {"name": name, **evaluate(test_env, policy).summary()}
        for name, policy in heuristic_policies(test_env.num_blocks, 0, test_env.device)
    ]
    statistics = write_report(results, args.algorithms, heuristics, out, args.bootstrap_reps)
    (out / "summary.json").write_text(
        json.dumps(
            {
                "results": results,
                "heuristics": heuristics,
                **statistics,
                "args": {k: str(v) for k, v in asdict(args).items()},
                **run_metadata(),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}/")
    return results


if __name__ == "__main__":
    run(main, Args, "experiments.compare", __doc__)
