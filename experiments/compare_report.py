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

import tyro

from blockdrop_env.checkpoint import atomic_write_text, run_metadata
from experiments.cli import UsageError, check_writable, require, run
from experiments.compare import write_report


@dataclass
class Args:
    comparisons: tyro.conf.Positional[tuple[Path, ...]]
    """Comparison folders (``<out-root>/<name>`` of ``experiments.compare``), each holding ``runs/``."""
    out: Path = Path("runs/compare/report")
    """Folder of the report."""
    bootstrap_reps: int = 2000
    """Bootstrap resamples of the confidence intervals."""


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
