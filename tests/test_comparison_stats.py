"""The comparison statistics against figures computed by hand on a small fixed sample."""

import numpy as np
import pytest

from experiments import comparison_stats as stats

SCORES = {"a": np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]), "b": np.array([0.0, 2.0, 2.0, 9.0])}


def test_iqm_is_the_mean_of_the_middle_half_with_an_interval_around_it():
    iqm = stats.iqm_intervals(SCORES, reps=500)
    # a: the middle half of 1..8 is 3, 4, 5, 6; b: of 0, 2, 2, 9 it is 2, 2.
    assert iqm["a"][0] == pytest.approx(4.5) and iqm["b"][0] == pytest.approx(2.0)
    for point, low, high in iqm.values():
        assert low <= point <= high
    assert 1.0 <= iqm["a"][1] < iqm["a"][2] <= 8.0  # resampled runs stay within the scores
    assert stats.iqm_intervals(SCORES, reps=500) == iqm  # seeded: the same intervals again


def test_probability_of_improvement_counts_pairs_ties_half():
    p = stats.improvement_probabilities({"x": np.array([1.0, 2.0, 3.0, 4.0]), "y": np.array([0.0, 2.0, 2.0, 5.0])}, 200)
    # x=1 beats 0; x=2 beats 0 and ties 2, 2; x=3 and x=4 beat 0, 2, 2: (1 + 2 + 3 + 3) / 16.
    assert p["x", "y"][0] == pytest.approx(9 / 16) and p["y", "x"][0] == pytest.approx(7 / 16)
    assert p["x", "y"][1] <= 9 / 16 <= p["x", "y"][2]


def test_markdown_says_how_many_runs_each_figure_rests_on(tmp_path):
    iqm, improvement = stats.iqm_intervals(SCORES, reps=100), stats.improvement_probabilities(SCORES, reps=100)
    md = stats.markdown(SCORES, iqm, improvement)
    assert "| a | 8 | 4.5000 |" in md and "| b | 4 | 2.0000 |" in md and "| a | b |" in md
    stats.plot(iqm, tmp_path / "iqm.png")
    assert (tmp_path / "iqm.png").stat().st_size > 1000
