"""experiments.walks: the test walks a training run logged to TensorBoard, as a markdown table."""

import time

import pytest
from torch.utils.tensorboard import SummaryWriter

from experiments import walks
from experiments.cli import UsageError


def log_walks(tb, walks_by_epoch, split="test"):
    """One writer (one event file) logging a walk of ``split`` per epoch, as train_blockdrop does."""
    writer = SummaryWriter(str(tb))
    for epoch, accuracy in walks_by_epoch.items():
        writer.add_scalar(f"{split}/accuracy", accuracy, epoch)
        writer.add_scalar(f"{split}/blocks_mean", 12.5, epoch)
        writer.add_scalar(f"{split}/blocks_std", 0.5, epoch)
        writer.add_scalar(f"{split}/flops_mean", 1.4e8, epoch)
        writer.add_scalar(f"{split}/reward_mean", accuracy - 0.8, epoch)
        writer.add_scalar(f"{split}/unique_policies", 7, epoch)
        writer.add_scalar("train/reward", -0.3, epoch)  # not a test walk: left out
    writer.close()


def test_a_resumed_run_is_read_across_its_event_files_the_later_value_winning(tmp_path, capsys):
    run = tmp_path / "run"
    log_walks(run / "tb", {10: 0.90, 20: 0.85, 25: 0.80})
    time.sleep(0.01)  # the resumed run's events are later in wall time
    log_walks(run / "tb", {20: 0.88, 30: 0.87, 35: 0.86})  # the resume re-ran epoch 20
    out = tmp_path / "report" / "walks.md"

    report = walks.main(walks.Args((run,), every=10, out=out))

    rows = [line for line in report.splitlines() if line.startswith("| ") and "after epoch" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| 10", "| 20", "| 30", "| 35"]  # 25 is off the grid; 35 is last
    assert rows[1] == "| 20 | 88.00 | 12.50 | 0.50 | 0.1400 | +0.0800 | 7 |"
    assert out.read_text() == report
    assert capsys.readouterr().out == report


def test_validation_walks_are_read_first_and_the_test_split_on_request(tmp_path):
    run = tmp_path / "run"
    log_walks(run / "tb", {10: 0.90}, split="val")
    log_walks(run / "tb", {10: 0.70}, split="test")

    default = walks.main(walks.Args((run,)))
    test = walks.main(walks.Args((run,), split="test"))

    assert "val accuracy (%)" in default and "| 10 | 90.00 |" in default
    assert "test accuracy (%)" in test and "| 10 | 70.00 |" in test


def test_a_folder_without_test_walks_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no TensorBoard log"):
        walks.main(walks.Args((tmp_path,)))
    writer = SummaryWriter(str(tmp_path / "tb"))
    writer.add_scalar("train/reward", -0.3, 1)
    writer.close()
    with pytest.raises(UsageError, match="no val walks"):
        walks.main(walks.Args((tmp_path,)))
    with pytest.raises(UsageError, match="--every"):
        walks.main(walks.Args((tmp_path,), every=0))
