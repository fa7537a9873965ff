"""Print the test walks a training run logged: one markdown row per evaluation of the greedy policy
on the test split (accuracy, blocks kept, FLOPs, reward at the stage's penalty, unique policies).

    python -m experiments.walks runs/long/r32-curriculum --every 10
    python -m experiments.walks runs/long/r32-curriculum runs/long/r32-curriculum-b2048 --out results/train/walks.md

``experiments.train_blockdrop`` writes a test walk every ``--eval-every`` epochs to the run's
TensorBoard log (``<run>/tb``, scalars ``test/*``); a run continued with ``--resume`` appends new
event files there, and where an epoch was logged twice (a run ended between a test walk and its
next checkpoint re-runs those epochs) the later value counts. Nothing is trained or evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tyro
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from blockdrop_env.checkpoint import atomic_write_text
from experiments.cli import check_writable, require, require_positive, run

COLUMNS = {  # TensorBoard tag -> (column heading, format of a value)
    "test/accuracy": ("test accuracy (%)", lambda v: f"{100 * v:.2f}"),
    "test/blocks_mean": ("blocks kept", lambda v: f"{v:.2f}"),
    "test/blocks_std": ("+-", lambda v: f"{v:.2f}"),
    "test/flops_mean": ("GFLOPs per image (policy included)", lambda v: f"{v / 1e9:.4f}"),
    "test/reward_mean": ("test reward", lambda v: f"{v:+.4f}"),
    "test/unique_policies": ("unique policies", lambda v: f"{v:.0f}"),
}


@dataclass
class Args:
    runs: tyro.conf.Positional[tuple[Path, ...]]
    """Run folders of ``experiments.train_blockdrop`` (each holding ``tb/``)."""
    every: int = 1
    """Keep the walks after epochs that are multiples of this (the last walk is always kept)."""
    out: Path | None = None
    """Also write the tables to this markdown file."""


def read_walks(run_folder: Path) -> dict[int, dict[str, float]]:
    """Epoch -> {tag: value} of every test walk in ``run_folder/tb``, the later value where an
    epoch was logged twice."""
    tb = run_folder / "tb"
    require(tb.is_dir(), f"{run_folder} has no TensorBoard log ({tb}): is it a run of experiments.train_blockdrop?")
    # purge_orphaned_data would drop the epochs a resumed run logs again; here the later value wins instead.
    log = EventAccumulator(str(tb), size_guidance={"scalars": 0}, purge_orphaned_data=False)
    log.Reload()
    tags = [t for t in COLUMNS if t in log.Tags()["scalars"]]
    require(bool(tags), f"{tb} holds no test walks (scalars test/*): has the run reached its first --eval-every?")
    walks: dict[int, dict[str, float]] = {}
    for tag in tags:
        for event in sorted(log.Scalars(tag), key=lambda e: e.wall_time):
            walks.setdefault(event.step, {})[tag] = event.value
    return dict(sorted(walks.items()))


def table(walks: dict[int, dict[str, float]], every: int) -> str:
    """The walks after multiples of ``every`` (and the last one) as a markdown table."""
    last = max(walks)
    rows = [(epoch, w) for epoch, w in walks.items() if epoch % every == 0 or epoch == last]
    lines = [
        "| after epoch | " + " | ".join(heading for heading, _ in COLUMNS.values()) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for epoch, walk in rows:
        cells = [fmt(walk[tag]) if tag in walk else "" for tag, (_, fmt) in COLUMNS.items()]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(args: Args) -> str:
    require(bool(args.runs), "name at least one run folder")
    require_positive(args, "every")
    if args.out is not None:
        check_writable(args.out.parent)
    report = "\n".join(f"{folder}:\n\n{table(read_walks(folder), args.every)}" for folder in args.runs)
    print(report, end="")
    if args.out is not None:
        atomic_write_text(args.out, report)
    return report


if __name__ == "__main__":
    run(main, Args, "experiments.walks", __doc__)
