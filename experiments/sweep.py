"""The runs of a comparison as Ray Tune trials: one trial per (algorithm, seed), each with its own
CPUs (and a fraction of a GPU, so that small trials share one), on a Ray started in this process by
default or on an existing cluster (``address``). Tune shows the trials' progress; each finished
run comes back to this process, which keeps it (the comparison's per-run JSON), so a run finished
on any node survives an interrupted sweep. Needs the ``sweep`` extra.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

Job = tuple[str, int]  # (algorithm, seed)


def ray_modules():
    """ray and ray.tune, or an ImportError saying how to install them."""
    try:
        import ray
        from ray import tune
    except ImportError as e:
        raise ImportError("sweeps run on Ray Tune: pip install 'blockdrop-gym[sweep]'") from e
    return ray, tune


def _trial(config: dict[str, Any], run: Callable[[str, int], dict]) -> None:
    """One run, reported to Tune with the node it ran on."""
    ray, tune = ray_modules()
    result = run(config["job"]["algorithm"], config["job"]["seed"])
    result["node"] = ray.get_runtime_context().get_node_id()
    tune.report({"reward": result["final"]["reward_mean"], "node": result["node"], "run": json.dumps(result)})


def run_trials(
    jobs: list[Job],
    run: Callable[[str, int], dict],
    keep: Callable[[dict], None],
    storage: Path,
    address: str | None = None,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
) -> None:
    """Run ``run(algorithm, seed)`` for every job as a Tune trial; ``keep`` gets each run's result
    in this process as soon as its trial reports. Raises RuntimeError naming the trials that failed."""
    ray, tune = ray_modules()

    class Keep(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:  # noqa: ANN001
            keep(json.loads(result["run"]))

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, configure_logging=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_trial, run=run), {"cpu": cpus_per_trial, "gpu": gpus_per_trial}),
            # A grid over the jobs themselves, not every algorithm x seed: finished runs are left out.
            param_space={"job": tune.grid_search([{"algorithm": a, "seed": s} for a, s in jobs])},
            run_config=tune.RunConfig(
                name="trials", storage_path=str(storage.resolve()), callbacks=[Keep()], verbose=1
            ),
        )
        grid = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    failed = [str(r.error).splitlines()[0] for r in grid if r.error is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(jobs)} trials failed: " + "; ".join(failed))
