"""Comparison statistics as RL papers now report them (Agarwal et al., NeurIPS 2021, with their
``rliable`` package): per algorithm, the interquartile mean (IQM) of the runs' final scores with a
95% stratified-bootstrap confidence interval; per pair, the probability that a run of one improves
on a run of the other (the Mann-Whitney statistic), with its interval.

Scores come as ``{algorithm: (runs,) array}``: one task (this env), so the stratified bootstrap
resamples runs. Needs the ``sweep`` extra (``pip install -e '.[sweep]'``).
"""

from __future__ import annotations

import warnings
from itertools import permutations
from pathlib import Path

import numpy as np

Interval = tuple[float, float, float]
"""(point estimate, lower bound, upper bound)."""


def rliable_modules():
    """rliable's library and metrics modules, or an ImportError saying how to install them."""
    try:
        from rliable import library, metrics
    except ImportError as e:
        raise ImportError("comparison statistics need rliable: pip install 'blockdrop-gym[sweep]'") from e
    return library, metrics


def _estimates(score_dict: dict, func, reps: int, seed: int) -> dict[str, Interval]:
    library, _ = rliable_modules()
    # The bootstrap also draws from numpy's global generator: seeded here (and restored) for
    # intervals that repeat; arch's note on its random_state argument is not ours to act on.
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="arch")
            points, intervals = library.get_interval_estimates(
                score_dict, func, reps=reps, random_state=np.random.RandomState(seed)
            )
    finally:
        np.random.set_state(state)
    return {k: (float(points[k][0]), float(intervals[k][0][0]), float(intervals[k][1][0])) for k in score_dict}


def iqm_intervals(scores: dict[str, np.ndarray], reps: int = 2000, seed: int = 0) -> dict[str, Interval]:
    """IQM of each algorithm's run scores with its 95% bootstrap interval."""
    _, metrics = rliable_modules()
    score_dict = {name: np.asarray(s, dtype=float).reshape(-1, 1) for name, s in scores.items()}
    return _estimates(score_dict, lambda x: np.array([metrics.aggregate_iqm(x)]), reps, seed)


def improvement_probabilities(
    scores: dict[str, np.ndarray], reps: int = 2000, seed: int = 0
) -> dict[tuple[str, str], Interval]:
    """P(a run of X scores more than a run of Y), ties counting half, for every ordered pair (X, Y)."""
    _, metrics = rliable_modules()
    pairs = {
        f"{x}\t{y}": (
            np.asarray(scores[x], dtype=float).reshape(-1, 1),
            np.asarray(scores[y], dtype=float).reshape(-1, 1),
        )
        for x, y in permutations(scores, 2)
    }
    estimates = _estimates(pairs, lambda a, b: np.array([metrics.probability_of_improvement(a, b)]), reps, seed)
    return {tuple(key.split("\t")): value for key, value in estimates.items()}  # type: ignore[misc]


def markdown(
    scores: dict[str, np.ndarray], iqm: dict[str, Interval], improvement: dict[tuple[str, str], Interval]
) -> str:
    """The IQM table (with the number of runs behind each figure) and the improvement table."""
    lines = [
        "| algorithm | runs | IQM of the final test reward | 95% CI |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {len(scores[a])} | {p:.4f} | [{lo:.4f}, {hi:.4f}] |" for a, (p, lo, hi) in iqm.items()]
    lines += ["", "| P(X improves on Y) | Y | estimate | 95% CI |", "|---|---|---|---|"]
    lines += [f"| {x} | {y} | {p:.2f} | [{lo:.2f}, {hi:.2f}] |" for (x, y), (p, lo, hi) in improvement.items()]
    return "\n".join(lines) + "\n"


def plot(iqm: dict[str, Interval], path: Path) -> None:
    """The IQM of each algorithm with its interval (rliable's interval plot)."""
    import matplotlib.pyplot as plt
    from rliable import plot_utils

    points = {name: np.array([p]) for name, (p, _, _) in iqm.items()}
    intervals = {name: np.array([[lo], [hi]]) for name, (_, lo, hi) in iqm.items()}
    fig, _ = plot_utils.plot_interval_estimates(
        points, intervals, metric_names=["IQM"], algorithms=list(iqm), xlabel="final test reward (95% CI)"
    )
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
