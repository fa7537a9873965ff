"""Print the walks a training run logged: one markdown row per evaluation of the greedy policy on
the validation (or test) split (accuracy, blocks kept, FLOPs, reward at the stage's penalty, unique
policies).

    python -m experiments.walks runs/long/r32-curriculum --every 10
    python -m experiments.walks runs/long/r32-curriculum runs/long/r32-curriculum-b2048 --out results/train/walks.md

``experiments.train_blockdrop`` writes a walk every ``--eval-every`` epochs to the run's
TensorBoard log (``<run>/tb``, scalars ``val/*``, or ``test/*`` with ``--eval-split test`` and in
runs from before the validation split); a run continued with ``--resume`` appends new
event files there, and where an epoch was logged twice (a run ended between a test walk and its
next checkpoint re-runs those epochs) the later value counts. Nothing is trained or evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from blockdrop_env.checkpoint import atomic_write_text
from experiments.cli import check_writable_file, require, require_positive, run

COLUMNS = {  # TensorBoard tag (after "<split>/") -> (column heading, format of a value)
    "accuracy": ("{split} accuracy (%)", lambda v: f"{100 * v:.2f}"),
    "blocks_mean": ("blocks kept", lambda v: f"{v:.2f}"),
    "blocks_std": ("+-", lambda v: f"{v:.2f}"),
    "flops_mean": ("GFLOPs per image (policy included)", lambda v: f"{v / 1e9:.4f}"),
    "reward_mean": ("{split} reward", lambda v: f"{v:+.4f}"),
    "unique_policies": ("unique policies", lambda v: f"{v:.0f}"),
}
SPLITS = ("val", "test")


@dataclass
class Args:
    runs: tyro.conf.Positional[tuple[Path, ...]]
    """Run folders of ``experiments.train_blockdrop`` (each holding ``tb/``)."""
    split: Literal["val", "test"] | None = None
    """Walks of this split; default: val where the run logged it, else test."""
    every: int = 1
    """Keep the walks after epochs that are multiples of this (the last walk is always kept)."""
    out: Path | None = None
    """Also write the tables to this markdown file."""


def read_walks(run_folder: Path, split: str | None = None) -> tuple[str, dict[int, dict[str, float]]]:
    """The split walked and epoch -> {metric: value} of every walk of it in ``run_folder/tb``, the
    later value where an epoch was logged twice. ``split`` None: val where logged, else test."""
    tb = run_folder / "tb"
    require(tb.is_dir(), f"{run_folder} has no TensorBoard log ({tb}): is it a run of experiments.train_blockdrop?")
    # purge_orphaned_data would drop the epochs a resumed run logs again; here the later value wins instead.
    log = EventAccumulator(str(tb), size_guidance={"scalars": 0}, purge_orphaned_data=False)
    log.Reload()
    logged = set(log.Tags()["scalars"])
    if split is None:
        split = next((s for s in SPLITS if f"{s}/accuracy" in logged), SPLITS[0])
    tags = [m for m in COLUMNS if f"{split}/{m}" in logged]
    require(bool(tags), f"{tb} holds no {split} walks (scalars {split}/*): has the run reached its first --eval-every?")
    walks: dict[int, dict[str, float]] = {}
    for metric in tags:
        for event in sorted(log.Scalars(f"{split}/{metric}"), key=lambda e: e.wall_time):
            walks.setdefault(event.step, {})[metric] = event.value
    return split, dict(sorted(walks.items()))


def table(walks: dict[int, dict[str, float]], every: int, split: str = "val") -> str:
    """The walks after multiples of ``every`` (and the last one) as a markdown table."""
    last = max(walks)
    rows = [(epoch, w) for epoch, w in walks.items() if epoch % every == 0 or epoch == last]
    lines = [
        "| after epoch | " + " | ".join(heading.format(split=split) for heading, _ in COLUMNS.values()) + " |",
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
        check_writable_file(args.out)
    tables = []
    for folder in args.runs:
        split, walks = read_walks(folder, args.split)
        tables.append(f"{folder}:\n\n{table(walks, args.every, split)}")
    report = "\n".join(tables)
    print(report, end="")
    if args.out is not None:
        atomic_write_text(args.out, report)
    return report


if __name__ == "__main__":
    run(main, Args, "experiments.walks", __doc__)
