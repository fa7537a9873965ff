"""Report one or more comparisons together: their finished runs in one table, one IQM table with
intervals, one probability-of-improvement table and the plots.

    python -m experiments.compare_report results/compare/cpu-100k results/compare/cpu-100k-curriculum \
        --out results/compare/cpu-100k-report

Reads the per-run JSON that ``experiments.compare`` writes as each run finishes
(``<folder>/runs/<algorithm>_seed<seed>.json``), so a comparison still running is reported on what
has finished, each figure saying how many runs it rests on. A run is labelled by its algorithm and
by the settings in which the folders differ (``ppo`` and ``ppo +curriculum``; ``a2c penalty=-2.0``);
folders with the same settings pool their seeds. Nothing is trained or evaluated: the FirstK and
RandomK points of the accuracy plot come from a folder's ``summary.json`` when one has them.
Writes ``table.md``, ``statistics.md``, ``runs.md`` (every run on its own row), ``report.json`` and
the plots into ``--out``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import tyro

from blockdrop_env.checkpoint import atomic_write_text, run_metadata
from experiments import comparison_stats
from experiments.cli import UsageError, check_writable, require, run
from experiments.plotting import save_plot


@dataclass
class Args:
    comparisons: tyro.conf.Positional[tuple[Path, ...]]
    """Comparison folders (``<out-root>/<name>`` of ``experiments.compare``), each holding ``runs/``."""
    out: Path = Path("runs/compare/report")
    """Folder of the report."""
    bootstrap_reps: int = 2000
    """Bootstrap resamples of the confidence intervals."""


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


def finished_runs(folder: Path) -> list[dict]:
    """The finished runs of one comparison folder, all with the same settings (a UsageError if not)."""
    paths = sorted((folder / "runs").glob("*_seed*.json"))
    require(bool(paths), f"{folder} has no finished runs ({folder / 'runs'}/<algorithm>_seed<seed>.json)")
    runs = []
    for path in paths:
        try:
            runs.append(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise UsageError(f"{path} is not a finished run's JSON ({e}): run its comparison again") from e
    settings = {json.dumps(r.get("settings"), sort_keys=True) for r in runs}
    require(len(settings) == 1, f"the runs in {folder / 'runs'} ran with different settings: report them apart")
    require(runs[0].get("settings") is not None, f"the runs in {folder / 'runs'} do not record their settings")
    return runs


def suffix(settings: dict[str, str], differing: list[str]) -> str:
    """What sets a folder's runs apart: ``+name`` for a setting that is on, ``name=value`` otherwise
    (nothing for one that is off)."""
    parts = []
    for key in differing:
        value = settings.get(key, "not recorded")
        if value in ("True", "False"):
            parts += [f"+{key}"] if value == "True" else []
        else:
            parts.append(f"{key}={value}")
    return "".join(f" {p}" for p in parts)


def labelled(folders: dict[Path, list[dict]]) -> list[dict]:
    """Every run, its "algorithm" replaced by its label (the original kept under "source")."""
    settings = {folder: runs[0]["settings"] for folder, runs in folders.items()}
    keys = sorted({k for s in settings.values() for k in s})
    differing = [k for k in keys if len({s.get(k) for s in settings.values()}) > 1]
    results, seen = [], {}
    for folder, runs in folders.items():
        for r in runs:
            label = r["algorithm"] + suffix(settings[folder], differing)
            key = (label, r["seed"])
            if key in seen:
                raise UsageError(f"{label} seed {r['seed']} is in both {seen[key]} and {folder}: report one of them")
            seen[key] = folder
            results.append({**r, "algorithm": label, "source": {"folder": str(folder), "algorithm": r["algorithm"]}})
    return results


def heuristics_of(folders: list[Path]) -> list[dict]:
    """FirstK and RandomK as the first folder with a ``summary.json`` evaluated them (none if none)."""
    for folder in folders:
        summary = folder / "summary.json"
        if summary.is_file():
            return json.loads(summary.read_text()).get("heuristics", [])
    return []


def runs_table(results: list[dict]) -> str:
    """Every run on its own row, in the order of the folders and their files; ``unique`` is the
    number of distinct block sets the greedy policy chose over the test images."""
    lines = [
        "| comparison | algorithm | seed | test reward | accuracy (%) | blocks kept | unique | train s | env steps/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        final = r["final"]
        lines.append(
            f"| {Path(r['source']['folder']).name} | {r['algorithm']} | {r['seed']} | {final['reward_mean']:+.4f} "
            f"| {100 * final['accuracy']:.2f} | {final['blocks_mean']:.2f} | {final.get('unique_policies', '-')} "
            f"| {r['train_seconds']:.0f} | {r['env_steps_per_second']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(args: Args) -> list[dict]:
    require(bool(args.comparisons), "name at least one comparison folder")
    require(args.bootstrap_reps >= 1, f"--bootstrap-reps must be a positive integer; got {args.bootstrap_reps}")
    check_writable(args.out)
    folders = {folder: finished_runs(folder) for folder in args.comparisons}
    results = labelled(folders)
    labels = tuple(sorted({r["algorithm"] for r in results}))
    statistics = write_report(results, labels, heuristics_of(list(folders)), args.out, args.bootstrap_reps)
    train_hours = sum(r["train_seconds"] for r in results) / 3600
    cost = f"{len(results)} runs, {train_hours:.2f} h of training in all (their train_seconds; evaluations excluded)"
    report = {
        "comparisons": {str(f): len(runs) for f, runs in folders.items()},
        "runs": len(results),
        "train_hours": train_hours,
        **statistics,
        "results": results,
        **run_metadata(),
    }
    atomic_write_text(args.out / "runs.md", runs_table(results))
    atomic_write_text(args.out / "report.json", json.dumps(report, indent=2) + "\n")
    print(cost)
    print(f"wrote {args.out}/")
    return results


if __name__ == "__main__":
    run(main, Args, "experiments.compare_report", __doc__)
