"""No lost work: locked output folders, a clean Ctrl-C that saves the resume state, resume records
that cannot lie, divergence stopped, and shipped agents by name for --init."""

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from blockdrop_env import device as device_module
from blockdrop_env.checkpoint import atomic_save, load_resnet
from experiments import pretrain_resnet, train_blockdrop
from experiments.cli import UsageError, lock_folder, release_folder

from .test_scripts import pretraining_dies_after_its_first_resume_file, train_args

ROOT = Path(__file__).resolve().parent.parent


def test_a_folder_locked_by_a_live_process_is_refused_naming_it(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from experiments.cli import lock_folder; "
            "from pathlib import Path; lock_folder(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=rf"{tmp_path / 'out'} is in use by another job \(pid {holder.pid}"):
            lock_folder(tmp_path / "out")
    finally:
        holder.kill()
        holder.wait()
    lock_folder(tmp_path / "out")  # the system dropped the dead process's lock: nothing stale
    release_folder(tmp_path / "out")


@pytest.mark.parametrize(
    "argv",
    [
        ["experiments.train_blockdrop", "--resume"],  # no checkpoint to resume
        ["experiments.evaluate", "--policy", "nope"],  # no such agent
    ],
)
def test_a_run_refused_after_taking_its_lock_leaves_no_empty_folder(argv, tmp_path):
    out = tmp_path / "new" / "out"
    existing = tmp_path / "existing"
    existing.mkdir()
    for folder in (out, existing):
        proc = subprocess.run(
            [sys.executable, "-m", *argv, "--out", str(folder)], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 2 and proc.stderr.startswith("error:"), proc.stderr
    assert not out.exists() and (tmp_path / "new").is_dir()  # the folder it made goes; its parent stays
    assert existing.is_dir()  # a folder the user had stays


def test_two_training_runs_into_one_folder_the_second_is_refused(tmp_path, env_kwargs):
    args = train_args(tmp_path, env_kwargs, stage="curriculum", curriculum_epochs=1)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from experiments.cli import lock_folder; "
            "from pathlib import Path; lock_folder(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)",
            str(args.out),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        stale = args.out / ".agent.pt.live.tmp"  # the live job's half-written checkpoint
        stale.write_bytes(b"half")
        with pytest.raises(UsageError, match="in use by another job"):
            train_blockdrop.main(args)
        assert stale.exists()  # clean-up never touches a live job's files
    finally:
        holder.kill()
        holder.wait()


def script(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.train_blockdrop", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def cli_args(tmp_path, env_kwargs, out) -> list[str]:
    return [
        "--stage", "curriculum", "--curriculum-epochs", "3", "--batch-size", "2", "--limit", "64",
        "--checkpoint-every", "5", "--eval-every", "5", "--device", "cpu", "--seed", "1",
        "--data-dir", str(env_kwargs["data_dir"]), "--resnet-checkpoint", str(env_kwargs["checkpoint"]),
        "--precision", "fp32", "--out", str(out),
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_saves_the_resume_state_and_the_resumed_run_ends_as_an_uninterrupted_one(
    tmp_path, env_kwargs, sig
):
    straight = script(*cli_args(tmp_path, env_kwargs, tmp_path / "a"))
    assert straight.wait(timeout=300) == 0, straight.stderr.read()

    run = script(*cli_args(tmp_path, env_kwargs, tmp_path / "b"))
    tb = tmp_path / "b" / "tb"
    deadline = time.time() + 120
    while not (tb.is_dir() and any(tb.iterdir())) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # inside the first epoch's steps
    run.send_signal(sig)
    assert run.wait(timeout=120) == 130
    err = run.stderr.read()
    assert "Traceback" not in err
    assert "resume state saved" in err and "--resume" in err.splitlines()[-1]
    saved = torch.load(tmp_path / "b" / "agent.pt", weights_only=True)
    assert saved["epoch"] < 3  # stopped before the end (its one save: checkpoint-every is 5)

    resumed = script(*cli_args(tmp_path, env_kwargs, tmp_path / "b"), "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a = torch.load(tmp_path / "a" / "agent.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "agent.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for key in a["policy"]:
        assert torch.equal(a["policy"][key], b["policy"][key]), key


def test_resume_refuses_epoch_counts_that_would_change_the_stage_of_epochs_run(tmp_path, env_kwargs):
    train_blockdrop.main(train_args(tmp_path, env_kwargs, curriculum_epochs=2, finetune_epochs=1))  # 2 cur + 1 fine
    with pytest.raises(UsageError, match="epoch 3 was a finetune epoch"):
        train_blockdrop.main(train_args(tmp_path, env_kwargs, curriculum_epochs=3, finetune_epochs=2, resume=True))
    summary = train_blockdrop.main(
        train_args(tmp_path, env_kwargs, curriculum_epochs=2, finetune_epochs=2, resume=True)
    )
    assert summary["epoch"] == 4 and summary["stage"] == "finetune"


def test_a_diverging_run_stops_with_an_error_and_keeps_its_last_good_state(tmp_path, env_kwargs, monkeypatch):
    args = train_args(tmp_path, env_kwargs, stage="curriculum", curriculum_epochs=3)
    steps, real_step = [], train_blockdrop.train_step

    def diverge_in_epoch_two(agent, env, *rest):
        steps.append(1)
        if len(steps) == 6:  # epoch 1 has ceil(72 / 16) = 5 steps
            next(agent.policy.parameters()).data.fill_(float("nan"))
        return real_step(agent, env, *rest)

    monkeypatch.setattr(train_blockdrop, "train_step", diverge_in_epoch_two)
    with pytest.raises(UsageError, match="diverged in epoch 2"):
        train_blockdrop.main(args)
    kept = torch.load(args.out / "agent.pt", weights_only=True)
    assert kept["epoch"] == 1 and all(torch.isfinite(v).all() for v in kept["policy"].values())


def test_init_takes_a_shipped_agents_name(tmp_path, env_kwargs):
    args = train_args(
        tmp_path, env_kwargs, stage="finetune", finetune_epochs=1, init="r32-in16-finetune-p2-cpu", policy_input=16
    )
    assert train_blockdrop.main(args)["epoch"] == 1
    with pytest.raises(FileNotFoundError, match="neither an agent checkpoint nor a shipped agent"):
        train_blockdrop.main(train_args(tmp_path / "x", env_kwargs, init="no-such-agent"))


def test_non_finite_weights_are_refused_at_load(tmp_path):
    from blockdrop_env.checkpoint import CheckpointError, load_resnet, save_resnet
    from blockdrop_env.resnet import resnet32

    model = resnet32()
    model.fc.weight.data[0, 0] = float("inf")
    save_resnet(tmp_path / "r32.pt", model)
    with pytest.raises(CheckpointError, match=r"non-finite weights \(fc.weight\)"):
        load_resnet(tmp_path / "r32.pt")


TRAIN, PRETRAIN = "experiments.train_blockdrop", "experiments.pretrain_resnet"


@pytest.mark.parametrize(
    "script, argv, match",
    [
        (TRAIN, ["--lr", "inf"], "--lr must be a finite number"),
        (TRAIN, ["--beta", "inf"], "--beta must be a finite number"),
        (TRAIN, ["--curriculum-step", "inf"], "--curriculum-step must be a finite number"),
        (TRAIN, ["--seed", "-1"], "--seed must lie in [0, 2**32)"),
        (TRAIN, ["--penalty=-inf"], "a finite number float32 holds"),
        (TRAIN, ["--penalty=-1e39"], "a finite number float32 holds"),
        (PRETRAIN, ["--lr", "inf"], "--lr must be a finite number"),
        (PRETRAIN, ["--momentum", "-1"], "--momentum must lie in"),
        (PRETRAIN, ["--weight-decay", "-1"], "--weight-decay must be >= 0"),
        (PRETRAIN, ["--label-smoothing", "2"], "--label-smoothing must lie in"),
    ],
)
def test_bad_arguments_fail_in_one_line_before_any_work(tmp_path, script, argv, match):
    out = tmp_path / "run" / ("r.pt" if script == PRETRAIN else "")
    result = subprocess.run(
        [sys.executable, "-m", script, "--out", str(out), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and match in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_diverging_pretraining_stops_with_an_error_and_saves_no_checkpoint(tmp_path, synthetic_dir):
    from experiments import pretrain_resnet

    args = pretrain_resnet.Args(
        depth=8, epochs=2, batch_size=16, lr=1e30, device="cpu", data_dir=str(synthetic_dir), out=tmp_path / "r.pt"
    )
    with pytest.raises(UsageError, match="diverged in epoch 1"):
        pretrain_resnet.main(args)
    assert not (tmp_path / "r.pt").exists()


def test_a_curriculum_run_resumes_under_other_finetuning_settings(tmp_path, env_kwargs):
    first = train_args(tmp_path, env_kwargs, stage="curriculum", curriculum_epochs=1, finetune_penalty=-10)
    train_blockdrop.main(first)
    summary = train_blockdrop.main(
        train_args(tmp_path, env_kwargs, stage="curriculum", curriculum_epochs=2, finetune_penalty=-2, resume=True)
    )
    assert summary["epoch"] == 2
    with pytest.raises(UsageError, match="--penalty: -1.0 -> -2"):
        train_blockdrop.main(
            train_args(tmp_path, env_kwargs, stage="curriculum", curriculum_epochs=3, penalty=-2, resume=True)
        )


@pytest.mark.slow
def test_a_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path, env_kwargs):
    out = tmp_path / "run"
    args = cli_args(tmp_path, env_kwargs, out)
    args[args.index("--checkpoint-every") + 1] = "1"
    args[args.index("--limit") + 1] = "16"
    first = script(*args[:3], "1", *args[4:])  # one curriculum epoch, then its checkpoint
    assert first.wait(timeout=300) == 0, first.stderr.read()
    saved = torch.load(out / "agent.pt", weights_only=True)
    size = (out / "agent.pt").stat().st_size

    def no_room() -> None:  # no file may grow past half a checkpoint: the next save cannot be written
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    full = subprocess.Popen(
        [sys.executable, "-m", "experiments.train_blockdrop", *args, "--resume"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=no_room,
    )
    assert full.wait(timeout=300) == 1
    err = full.stderr.read()
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"error: could not write {out / 'agent.pt'} (File too large)")
    kept = torch.load(out / "agent.pt", weights_only=True)
    assert kept["epoch"] == saved["epoch"] == 1
    assert all(torch.equal(kept["policy"][k], v) for k, v in saved["policy"].items())
    assert not list(out.glob(".*.tmp"))  # the half-written temporary is gone


def pretrain(out: Path, data_dir: Path, *extra: str) -> subprocess.Popen:
    """A pretraining run; its stderr (the progress bar) goes to ``<out>.err``, not a pipe that could fill."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", PRETRAIN, "--depth", "8", "--epochs", "3", "--batch-size", "1", "--device", "cpu",
         "--precision", "fp32", "--seed", "1", "--data-dir", str(data_dir), "--out", str(out), *extra],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=out.with_suffix(".err").open("w"), text=True,
    )  # fmt: skip


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s lock, once it has printed "held"."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from experiments.cli import lock_folder; from pathlib import Path; "
         "lock_folder(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)", str(folder)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.slow
def test_pretraining_is_locked_and_an_interrupt_saves_a_state_that_resumes_exactly(tmp_path, synthetic_dir):
    out = tmp_path / "b" / "r.pt"
    holder = hold_lock(out.parent)
    try:
        assert pretrain(out, synthetic_dir).wait(timeout=120) == 2
        assert f"{out.parent} is in use by another job (pid {holder.pid}" in out.with_suffix(".err").read_text()
    finally:
        holder.kill()
        holder.wait()

    straight = pretrain(tmp_path / "a" / "r.pt", synthetic_dir)
    assert straight.wait(timeout=300) == 0, (tmp_path / "a" / "r.err").read_text()
    run = pretrain(out, synthetic_dir)
    deadline = time.time() + 120
    while "/240" not in out.with_suffix(".err").read_text() and time.time() < deadline:
        time.sleep(0.05)  # until its progress bar shows: 240 steps of one image each follow
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=120) == 130
    err = out.with_suffix(".err").read_text()
    assert "Traceback" not in err and "resume state saved" in err and "--resume" in err.splitlines()[-1]
    saved = torch.load(out.with_suffix(".resume.pt"), weights_only=True)
    assert (saved["epoch"], saved["step"]) < (3, 0) and not out.exists()

    resumed = pretrain(out, synthetic_dir, "--resume")
    assert resumed.wait(timeout=300) == 0, out.with_suffix(".err").read_text()
    a = torch.load(tmp_path / "a" / "r.pt", weights_only=True)["state_dict"]
    b = torch.load(out, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit: the same images, crops and flips


@pytest.mark.parametrize("script", [PRETRAIN, "experiments.walks"])
def test_an_output_file_that_is_a_folder_is_refused_before_any_work(tmp_path, script):
    folder = tmp_path / "existing"
    folder.mkdir()
    runs = [str(ROOT / "results" / "train" / "long" / "r32-curriculum")] if script != PRETRAIN else ["--overwrite"]
    result = subprocess.run(
        [sys.executable, "-m", script, *runs, "--out", str(folder)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: --out names a file to write; {folder} is a folder: give a file path in it"


def pretend_native_bf16(monkeypatch, native: bool) -> None:
    """Move the run to a CPU with (or without) bf16 units: what --precision auto trains in."""
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)


def test_a_pretraining_resumed_in_another_dtype_says_so_and_records_each_session(
    synthetic_dir, tmp_path, monkeypatch, capsys
):
    args = dict(batch_size=16, device="cpu", data_dir=str(synthetic_dir), epochs=2, out=tmp_path / "r.pt")
    pretend_native_bf16(monkeypatch, True)
    with pretraining_dies_after_its_first_resume_file(monkeypatch):  # the first session, after epoch 1
        pretrain_resnet.main(pretrain_resnet.Args(**args))
    capsys.readouterr()

    pretend_native_bf16(monkeypatch, False)
    summary = pretrain_resnet.main(pretrain_resnet.Args(**args, resume=True))
    assert [(s["from_epoch"], s["dtype"]) for s in summary["sessions"]] == [(0, "bfloat16"), (1, "float32")]
    assert "this session trains in float32 from epoch 2, the run's last one in bfloat16" in capsys.readouterr().err
    assert load_resnet(tmp_path / "r.pt")[1]["sessions"] == summary["sessions"]  # the checkpoint keeps them


def test_an_agent_run_records_its_sessions_and_notes_only_a_change_of_dtype(tmp_path, env_kwargs, monkeypatch, capsys):
    pretend_native_bf16(monkeypatch, False)
    train_blockdrop.main(train_args(tmp_path, env_kwargs, stop_after=1))
    train_blockdrop.main(train_args(tmp_path, env_kwargs, stop_after=1, resume=True))  # the same machine
    assert "this session trains" not in capsys.readouterr().err
    path = tmp_path / "run" / "agent.pt"
    saved = torch.load(path, weights_only=True)
    assert [(s["from_epoch"], s["dtype"]) for s in saved["sessions"]] == [(0, "float32"), (1, "float32")]

    del saved["sessions"]  # a resume state from before sessions were recorded
    atomic_save(saved, path)
    pretend_native_bf16(monkeypatch, True)
    summary = train_blockdrop.main(train_args(tmp_path, env_kwargs, stop_after=1, resume=True))
    assert "this session trains" not in capsys.readouterr().err  # nothing to compare with
    assert [(s["from_epoch"], s["dtype"]) for s in summary["sessions"]] == [(0, "unrecorded"), (2, "bfloat16")]

    pretend_native_bf16(monkeypatch, False)
    summary = train_blockdrop.main(train_args(tmp_path, env_kwargs, resume=True))
    assert "this session trains in float32 from epoch 4, the run's last one in bfloat16" in capsys.readouterr().err
    saved = torch.load(path, weights_only=True)["sessions"]
    assert [s["dtype"] for s in saved] == ["unrecorded", "bfloat16", "float32"]
    assert summary["sessions"][-1]["from_epoch"] == 3 and summary["sessions"][-1]["git_commit"]
