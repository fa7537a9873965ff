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

This module holds the command line and the dispatch of runs; a run's training loops are in
:mod:`experiments.compare_training`, its saving and reuse in :mod:`experiments.compare_runs`, and
the tables, statistics and plots in :mod:`experiments.compare_report` (which also reports several
comparisons together).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from agents.baselines import heuristic_policies
from agents.evaluation import evaluate
from blockdrop_env.checkpoint import atomic_write_text, run_metadata
from experiments import comparison_stats, sweep
from experiments.cli import (
    DataArgs,
    check_device,
    check_writable,
    cost_note,
    lock_folder,
    require,
    require_penalty,
    require_positive,
    require_seed,
    run,
)
from experiments.compare_report import write_report
from experiments.compare_runs import load_resume, resume_path, reusable
from experiments.compare_training import make_envs, run_one
from experiments.forward_args import ForwardArgs


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


def check_args(args: Args) -> None:
    known = ("blockdrop", "ppo", "a2c", "trpo")
    require(bool(args.algorithms) and set(args.algorithms) <= set(known), f"--algorithms must be among {known}")
    require(bool(args.seeds), "--seeds needs at least one seed")
    require(len(set(args.seeds)) == len(args.seeds), f"--seeds must differ (each counts as a run); got {args.seeds}")
    require_seed("seeds", *args.seeds)
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
