"""experiments.compare_report: comparisons reported together from their per-run JSON."""

import json

import pytest

from experiments import compare_report
from experiments.cli import UsageError

SETTINGS = {"env_steps": "1000", "curriculum": "False", "penalty": "-1.0", "device": "cpu", "precision": "fp32"}


def write_run(folder, algorithm, seed, reward, settings=SETTINGS, train_seconds=100.0):
    point = {"env_steps": 1000, "reward_mean": reward, "accuracy": 0.9, "blocks_mean": 12.0, "flops_mean": 1.3e8}
    run = {
        "algorithm": algorithm,
        "seed": seed,
        "train_seconds": train_seconds,
        "env_steps_per_second": 1000 / train_seconds,
        "final": point,
        "curve": [point],
        "settings": settings,
    }
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    (folder / "runs" / f"{algorithm}_seed{seed}.json").write_text(json.dumps(run))


def test_runs_are_labelled_by_the_settings_their_folders_differ_in(tmp_path):
    plain, curriculum = tmp_path / "plain", tmp_path / "curriculum"
    for seed, reward in enumerate([0.1, 0.2, 0.3]):
        write_run(plain, "ppo", seed, reward)
        write_run(curriculum, "ppo", seed, reward + 1, {**SETTINGS, "curriculum": "True"}, train_seconds=200.0)
    write_run(plain, "a2c", 0, 0.5)
    out = tmp_path / "report"
    results = compare_report.main(compare_report.Args((plain, curriculum), out=out, bootstrap_reps=50))

    labels = {r["algorithm"] for r in results}
    assert labels == {"a2c", "ppo", "ppo +curriculum"}
    assert {r["source"]["algorithm"] for r in results if r["algorithm"] == "ppo +curriculum"} == {"ppo"}
    report = json.loads((out / "report.json").read_text())
    assert report["runs"] == 7
    assert report["train_hours"] == pytest.approx((4 * 100 + 3 * 200) / 3600)
    assert report["iqm"]["ppo +curriculum"]["point"] == pytest.approx(1.2)  # IQM of 3 runs: the middle one
    statistics = (out / "statistics.md").read_text()
    assert "| a2c | 1 |" in statistics and "| ppo | 3 |" in statistics and "| ppo +curriculum | 3 |" in statistics
    assert "| ppo +curriculum | ppo | 1.00 |" in statistics  # every curriculum run beats every plain one
    rows = (out / "runs.md").read_text().splitlines()[2:]
    assert len(rows) == 7
    assert "| curriculum | ppo +curriculum | 2 | +1.3000 | 90.00 | 12.00 | - | 200 | 5 |" in rows
    for name in ("table.md", "iqm_reward.png", "reward_vs_env_steps.png", "accuracy_vs_blocks.png"):
        assert (out / name).is_file()


def test_folders_with_the_same_settings_pool_their_seeds_but_not_a_seed_twice(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    write_run(first, "ppo", 0, 0.1)
    write_run(second, "ppo", 1, 0.2)
    results = compare_report.main(compare_report.Args((first, second), out=tmp_path / "pooled", bootstrap_reps=20))
    assert sorted((r["algorithm"], r["seed"]) for r in results) == [("ppo", 0), ("ppo", 1)]

    write_run(second, "ppo", 0, 0.3)
    with pytest.raises(UsageError, match="ppo seed 0 is in both"):
        compare_report.main(compare_report.Args((first, second), out=tmp_path / "twice"))


def test_a_folder_whose_runs_differ_in_settings_or_that_has_none_is_refused(tmp_path):
    mixed = tmp_path / "mixed"
    write_run(mixed, "ppo", 0, 0.1)
    write_run(mixed, "ppo", 1, 0.1, {**SETTINGS, "penalty": "-2.0"})
    with pytest.raises(UsageError, match="different settings"):
        compare_report.main(compare_report.Args((mixed,), out=tmp_path / "r"))
    (tmp_path / "torn" / "runs").mkdir(parents=True)
    (tmp_path / "torn" / "runs" / "ppo_seed0.json").write_text('{"algorithm": "pp')
    with pytest.raises(UsageError, match="ppo_seed0.json is not a finished run's JSON"):
        compare_report.main(compare_report.Args((tmp_path / "torn",), out=tmp_path / "r"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no finished runs"):
        compare_report.main(compare_report.Args((tmp_path / "empty",), out=tmp_path / "r"))
