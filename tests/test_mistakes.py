"""What the scripts and the env do with a user's mistake: no lost work, no silent misuse, errors
that say what was expected (one line from a script)."""

import math
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.reinforce import ReinforceConfig
from agents.sb3 import make_algorithm
from blockdrop_env import BlockDropEnv, BlockDropVectorEnv
from blockdrop_env import device as device_module
from blockdrop_env.data import load_cifar
from blockdrop_env.inference import ForwardOptions
from experiments import compare, pretrain_resnet, train_blockdrop
from experiments import evaluate as evaluate_script
from experiments.cli import UsageError

from .test_scripts import train_args

ROOT = Path(__file__).resolve().parents[1]
PYTHONPATH = {**os.environ, "PYTHONPATH": str(ROOT)}  # scripts run from elsewhere, so they write nothing here
ONCE = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def pretrain_args(synthetic_dir, out, **kw) -> pretrain_resnet.Args:
    return pretrain_resnet.Args(
        **{"epochs": 1, "batch_size": 16, "device": "cpu", "data_dir": str(synthetic_dir), "out": out, **kw}
    )


# Lost work


def test_a_fresh_training_run_refuses_an_out_that_holds_a_run(tmp_path, env_kwargs):
    args = train_args(tmp_path, env_kwargs, stage="curriculum", curriculum_epochs=1)
    train_blockdrop.main(args)
    agent = tmp_path / "run" / "agent.pt"
    before = agent.read_bytes()
    with pytest.raises(UsageError, match=r"agent\.pt exists: pass --resume .* or --overwrite"):
        train_blockdrop.main(args)
    assert agent.read_bytes() == before  # nothing touched
    train_blockdrop.main(train_args(tmp_path, env_kwargs, stage="curriculum", curriculum_epochs=1, overwrite=True))


def test_a_fresh_pretraining_run_refuses_an_existing_checkpoint(synthetic_dir, tmp_path):
    pretrain_resnet.main(pretrain_args(synthetic_dir, tmp_path / "r.pt"))
    with pytest.raises(UsageError, match=r"r\.pt exists: pass --resume .* or --overwrite"):
        pretrain_resnet.main(pretrain_args(synthetic_dir, tmp_path / "r.pt"))
    pretrain_resnet.main(pretrain_args(synthetic_dir, tmp_path / "r.pt", overwrite=True))


def test_an_unwritable_output_fails_before_any_work(tmp_path, env_kwargs, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    def no_work(*args, **kwargs):
        raise AssertionError("the output must be checked before any work")

    monkeypatch.setattr(evaluate_script, "evaluate", no_work)
    monkeypatch.setattr(evaluate_script, "make_eval_env", no_work)
    with pytest.raises(UsageError, match="cannot write to"):
        evaluate_script.main(evaluate_script.Args(out=blocker / "eval", device="cpu"))
    monkeypatch.setattr(train_blockdrop, "BlockDropAgent", no_work)
    with pytest.raises(UsageError, match="cannot write to"):
        train_blockdrop.main(train_args(tmp_path, env_kwargs, out=blocker / "run"))
    monkeypatch.setattr(pretrain_resnet, "load_cifar", no_work)
    with pytest.raises(UsageError, match="cannot write to"):
        pretrain_resnet.main(pretrain_resnet.Args(out=blocker / "r.pt", device="cpu"))
    monkeypatch.setattr(compare, "run_one", no_work)
    with pytest.raises(UsageError, match="cannot write to"):
        compare.main(compare.Args(out_root=blocker, device="cpu"))


def test_pretraining_resume_refuses_a_changed_schedule(synthetic_dir, tmp_path, monkeypatch):
    class Crash(Exception):
        pass

    def save_then_crash(obj, path):
        original(obj, path)
        raise Crash

    original = pretrain_resnet.atomic_save
    monkeypatch.setattr(pretrain_resnet, "atomic_save", save_then_crash)
    with pytest.raises(Crash):
        pretrain_resnet.main(pretrain_args(synthetic_dir, tmp_path / "r.pt", epochs=2))
    monkeypatch.setattr(pretrain_resnet, "atomic_save", original)
    with pytest.raises(UsageError, match=r"--epochs: 2 -> 3"):
        pretrain_resnet.main(pretrain_args(synthetic_dir, tmp_path / "r.pt", epochs=3, resume=True))
    with pytest.raises(UsageError, match=r"--lr: 0\.2 -> 0\.1"):
        pretrain_resnet.main(pretrain_args(synthetic_dir, tmp_path / "r.pt", epochs=2, lr=0.1, resume=True))
    pretrain_resnet.main(pretrain_args(synthetic_dir, tmp_path / "r.pt", epochs=2, resume=True))


def test_temporary_files_of_a_killed_save_are_cleaned_up(tmp_path, env_kwargs):
    run = tmp_path / "run"
    run.mkdir()
    left = [run / ".agent.pt.k1l2.tmp", run / ".agent.pt.x9y8.tmp"]
    for tmp in left:
        tmp.write_bytes(b"half a checkpoint")
    other = run / "notes.tmp"
    other.write_text("the user's")
    train_blockdrop.main(train_args(tmp_path, env_kwargs, stage="curriculum", curriculum_epochs=1))
    assert not any(tmp.exists() for tmp in left) and other.exists()


def test_compare_reuses_only_runs_with_the_same_settings(tmp_path, env_kwargs, capsys, monkeypatch):
    args = dict(
        algorithms=("a2c",),
        seeds=(0,),
        engine="serial",
        env_steps=32,
        num_envs=16,
        eval_points=1,
        name="tiny",
        out_root=tmp_path,
        checkpoint=env_kwargs["checkpoint"],
        device="cpu",
        precision="fp32",
        data_dir=str(env_kwargs["data_dir"]),
    )
    first = compare.main(compare.Args(**args))
    capsys.readouterr()

    def no_run(*a, **k):
        raise AssertionError("a finished run with the same settings is reused")

    monkeypatch.setattr(compare, "run_one", no_run)
    assert compare.main(compare.Args(**args)) == first
    assert "reusing 1 finished run(s)" in capsys.readouterr().out
    with pytest.raises(UsageError, match=r"a2c_seed0\.json ran with other settings \(env_steps: 32 -> 48\)"):
        compare.main(compare.Args(**{**args, "env_steps": 48}))
    # "auto" resolves per machine: on a CPU with native bf16 it is not the fp32 the run was made in.
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    with pytest.raises(UsageError, match=r"a2c_seed0\.json ran with other settings \(precision: fp32 -> bf16\)"):
        compare.main(compare.Args(**{**args, "precision": "auto"}))
    monkeypatch.undo()
    again = compare.main(compare.Args(**{**args, "env_steps": 48, "overwrite": True}))
    assert again[0]["env_steps"] == 48


def test_user_commands_in_the_readme_write_outside_the_committed_results():
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith((".venv/bin/python -m", "python3 -m venv"))]
    writing = [line for line in commands if "--out" in line]
    assert writing and all("--out runs/" in line or "--out-root runs/" in line for line in writing), writing
    assert str(compare.Args().out_root).startswith("runs") and str(evaluate_script.Args().out).startswith("runs")


# Wrong results, silently


@pytest.mark.parametrize(
    "change, named",
    [({"lr": 0.01}, "--lr"), ({"seed": 4}, "--seed"), ({"limit": 40}, "--limit"), ({"batch_size": 8}, "--batch-size")],
)
def test_resume_refuses_changed_arguments_naming_each(tmp_path, env_kwargs, change, named):
    train_blockdrop.main(train_args(tmp_path, env_kwargs, stop_after=1))
    with pytest.raises(UsageError, match=f"differ from the run's: {named}: "):
        train_blockdrop.main(train_args(tmp_path, env_kwargs, resume=True, **change))


def test_resume_may_extend_a_run_and_records_what_it_used(tmp_path, env_kwargs):
    args = dict(stage="curriculum", curriculum_epochs=1)
    train_blockdrop.main(train_args(tmp_path, env_kwargs, **args))
    with pytest.raises(UsageError, match="has run all 1 epochs"):
        train_blockdrop.main(train_args(tmp_path, env_kwargs, **args, resume=True))
    summary = train_blockdrop.main(
        train_args(tmp_path, env_kwargs, stage="curriculum", curriculum_epochs=2, resume=True)
    )
    saved = torch.load(tmp_path / "run" / "agent.pt", weights_only=True)
    assert summary["epoch"] == 2 and saved["epoch"] == 2 and saved["args"]["curriculum_epochs"] == "2"


@given(penalty=st.floats(min_value=1e-6, max_value=1e6) | st.integers(1, 10**6))
@ONCE
def test_a_positive_penalty_is_refused_everywhere(penalty, env_kwargs, tmp_path):
    with pytest.raises(ValueError, match="penalty must be a finite number <= 0"):
        BlockDropEnv(penalty=penalty, **env_kwargs)
    with pytest.raises(ValueError, match="penalty must be a finite number <= 0"):
        BlockDropVectorEnv(num_envs=2, penalty=penalty, **env_kwargs)
    with pytest.raises(UsageError, match="--penalty must be <= 0"):
        train_blockdrop.main(train_args(tmp_path, env_kwargs, penalty=penalty))
    with pytest.raises(UsageError, match="--finetune-penalty must be <= 0"):
        train_blockdrop.main(train_args(tmp_path, env_kwargs, finetune_penalty=penalty))
    with pytest.raises(UsageError, match="--penalty must be <= 0"):
        evaluate_script.main(evaluate_script.Args(penalty=penalty, out=tmp_path / "e"))


@pytest.mark.parametrize(
    "bad",
    [
        {"curriculum_epochs": -1},
        {"finetune_epochs": -5},
        {"stop_after": 0},
        {"checkpoint_every": 0},
        {"eval_every": 0},
        {"curriculum_epochs": 0, "finetune_epochs": 0},
    ],
)
def test_training_that_would_do_nothing_or_die_later_is_refused_at_once(tmp_path, env_kwargs, bad):
    with pytest.raises(UsageError):
        train_blockdrop.main(train_args(tmp_path, env_kwargs, **bad))
    assert not (tmp_path / "run" / "agent.pt").exists()


# Security


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_crafted_resume_file_is_refused_without_running_it(synthetic_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "r.resume.pt", "wb") as f:
        pickle.dump({"model": Payload()}, f, protocol=2)  # the protocol torch.save writes
    with pytest.raises(ValueError, match="cannot be read"):
        pretrain_resnet.main(pretrain_args(synthetic_dir, tmp_path / "r.pt", resume=True))
    assert not (tmp_path / "pwned").exists()


# Clear errors


def test_fused_blocks_without_cuda_are_refused_at_construction(env_kwargs, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="fused Triton blocks run on CUDA"):
        BlockDropVectorEnv(num_envs=2, fused="one", **env_kwargs)
    with pytest.raises(ValueError, match="fused Triton blocks run on CUDA"):
        BlockDropEnv(forward=ForwardOptions(fused="two"), **env_kwargs)


@given(index=st.sampled_from(["3", None, "abc", b"1", {"a": 1}, object()]))
@ONCE
def test_non_integer_indices_say_what_was_expected(index, env_kwargs):
    env = BlockDropEnv(split="test", **env_kwargs)
    with pytest.raises(ValueError, match=r"options\['index'\] must be integer image indices"):
        env.reset(options={"index": index})


@given(index=st.integers(0, 15), as_numpy=st.booleans())
@ONCE
def test_integer_indices_show_that_image(index, as_numpy, env_kwargs):
    env = BlockDropEnv(split="test", **env_kwargs)
    obs, info = env.reset(options={"index": np.int64(index) if as_numpy else index})
    assert info["index"] == index and np.array_equal(obs, env.task.images[index].numpy())


@pytest.mark.parametrize("penalty", ["-1", None, True, [1]])
def test_a_non_numeric_penalty_says_what_was_expected(penalty, env_kwargs):
    with pytest.raises(ValueError, match="penalty must be a number <= 0"):
        BlockDropEnv(penalty=penalty, **env_kwargs)


@pytest.mark.parametrize("limit", [2.5, "10", 0, -3, True])
def test_a_bad_limit_says_what_was_expected(limit, env_kwargs):
    with pytest.raises(ValueError, match="limit must be None or a positive integer"):
        BlockDropVectorEnv(num_envs=2, limit=limit, **env_kwargs)


# Every place that takes one of a few named choices answers a wrong one in the same words, listing
# what it takes; an unhashable value is refused the same way rather than with a TypeError.
@pytest.mark.parametrize(
    "refuse, says",
    [
        (lambda: ForwardOptions(dtype="fp8"), "dtype must be one of 'float32', 'float16', 'bfloat16'; got 'fp8'"),
        (lambda: ForwardOptions(fused="three"), "fused must be None or one of 'one', 'two'; got 'three'"),
        (lambda: ForwardOptions(compile=["default"]), "compile must be None or one of 'default', "),
        (lambda: device_module.check_precision("bf16"), "precision must be one of 'auto', 'fp32'; got 'bf16'"),
        (lambda: load_cifar("valid"), "split must be one of 'train', 'val', 'trainval', 'test'; got 'valid'"),
        (lambda: load_cifar("test", dataset="svhn"), "dataset must be one of 'cifar10', 'cifar100'; got 'svhn'"),
        (lambda: ReinforceConfig(entropy=None), "entropy must be one of 'bernoulli', 'authors'; got None"),
        (lambda: make_algorithm("dqn", "BlockDrop-CIFAR10-R32"), "algorithm must be one of 'ppo', 'a2c', 'trpo'"),
    ],
)
def test_a_wrong_choice_is_refused_in_the_same_words_everywhere(refuse, says):
    with pytest.raises(ValueError, match="^" + re.escape(says)):
        refuse()


@given(alpha=st.floats(allow_nan=False, allow_infinity=False).filter(lambda a: not 0.5 < a <= 1))
@ONCE
def test_alpha_outside_its_range_is_refused(alpha, tmp_path, env_kwargs):
    with pytest.raises(UsageError, match=r"--alpha must lie in \(0\.5, 1\]"):
        train_blockdrop.main(train_args(tmp_path, env_kwargs, alpha=alpha))


@pytest.mark.parametrize("bad", [{"limit": 0}, {"batch_size": 0}, {"epochs": 0}, {"depth": 31}])
def test_pretraining_refuses_zero_sizes(synthetic_dir, tmp_path, bad):
    with pytest.raises(UsageError):
        pretrain_resnet.main(pretrain_args(synthetic_dir, tmp_path / "r.pt", **bad))


@pytest.mark.parametrize(
    "module, argv, says",
    [
        ("experiments.train_blockdrop", ["--alpha", "2"], "--alpha must lie in (0.5, 1]"),
        ("experiments.train_blockdrop", ["--beta", "-1"], "--beta must be >= 0; got -1.0"),
        ("experiments.pretrain_resnet", ["--batch-size", "0"], "--batch-size must be a positive integer"),
        ("experiments.evaluate", ["--penalty", "3"], "--penalty must be <= 0"),
        ("experiments.evaluate", ["--split", "valid"], "--split must be one of 'train', 'val', 'trainval', 'test'"),
        ("experiments.pretrain_resnet", ["--dataset", "svhn"], "--dataset must be one of 'cifar10', 'cifar100'"),
        ("experiments.bench", ["--deploy-rounds", "0"], "--deploy-rounds must be a positive integer"),
        ("experiments.compare", ["--algorithms", "dqn"], "--algorithms must be among"),
        ("experiments.compare", ["--save-every", "-1"], "--save-every must be 0 (no saves) or positive"),
        ("experiments.bench", ["--deploy-depths", "50"], "--deploy-depths must be among the shipped"),
        ("experiments.bench", ["--deploy-agents", "nope"], "nope is neither an agent checkpoint nor a shipped"),
        ("experiments.bench", ["--throughput-batches", "0"], "--throughput-batches must be positive batch sizes"),
        ("experiments.bench", ["--latency-images", "0"], "--latency-images must be a positive integer"),
        pytest.param(
            "experiments.bench",
            ["--device", "cuda"],
            "CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
    ],
)
def test_a_bad_argument_prints_one_line_not_a_traceback(module, argv, says, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", module, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=PYTHONPATH
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {proc.stderr.strip()[7:]}"] and says in proc.stderr


def test_a_corrupt_checkpoint_is_an_error_message_not_a_traceback(tmp_path, synthetic_dir):
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    argv = ["-m", "experiments.evaluate", "--checkpoint", str(tmp_path / "broken.pt"), "--out", str(tmp_path / "e")]
    argv += ["--data-dir", str(synthetic_dir)]  # the data is found wherever the tests run
    proc = subprocess.run([sys.executable, *argv], cwd=tmp_path, capture_output=True, text=True, env=PYTHONPATH)
    assert proc.returncode == 2 and proc.stderr.startswith("error: checkpoint") and "cannot be read" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_data_is_an_error_message_not_a_traceback(tmp_path):
    argv = ["-m", "experiments.evaluate", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "e")]
    proc = subprocess.run([sys.executable, *argv], cwd=tmp_path, capture_output=True, text=True, env=PYTHONPATH)
    assert proc.returncode == 2 and proc.stderr.startswith("error: cifar10 (cifar-10-batches-py/) not found")
    assert "Traceback" not in proc.stderr and "--download" in proc.stderr


def test_help_names_the_module_and_describes_the_script():
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train_blockdrop", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "python -m experiments.train_blockdrop" in proc.stdout
    assert "Train the BlockDrop agent" in proc.stdout


# Argument ranges: every value outside is refused naming the flag, every value inside is accepted
# (and, for seeds, seeds everything the scripts seed).
NOT_POSITIVE_FINITE = st.floats().filter(lambda x: not (math.isfinite(x) and x > 0))


@given(lr=NOT_POSITIVE_FINITE, which=st.sampled_from(["lr", "finetune_lr"]))
@ONCE
def test_learning_rates_that_are_not_positive_finite_numbers_are_refused(lr, which, tmp_path, env_kwargs):
    with pytest.raises(UsageError, match="learning rate|must be a finite number"):
        train_blockdrop.check_args(train_args(tmp_path, env_kwargs, **{which: lr}))
    if which == "lr":
        with pytest.raises(UsageError, match="--lr must be"):
            pretrain_resnet.check_args(pretrain_args(env_kwargs["data_dir"], tmp_path / "r.pt", lr=lr))


@given(penalty=st.floats())
@ONCE
def test_a_penalty_is_accepted_exactly_when_float32_holds_it_and_it_is_at_most_zero(penalty, tmp_path, env_kwargs):
    inside = math.isfinite(penalty) and -3.4028234663852886e38 <= penalty <= 0
    args = train_args(tmp_path, env_kwargs, penalty=penalty)
    if inside:
        train_blockdrop.check_args(args)
        assert math.isfinite(np.float32(penalty))  # what the env's rewards are computed in
    else:
        with pytest.raises(UsageError, match="--penalty must be <= 0"):
            train_blockdrop.check_args(args)


@given(momentum=st.floats(), weight_decay=st.floats(), smoothing=st.floats())
@ONCE
def test_pretraining_optimiser_settings_outside_their_ranges_are_refused(
    momentum, weight_decay, smoothing, tmp_path, synthetic_dir
):
    args = pretrain_args(
        synthetic_dir, tmp_path / "r.pt", momentum=momentum, weight_decay=weight_decay, label_smoothing=smoothing
    )
    finite = all(math.isfinite(x) for x in (momentum, weight_decay, smoothing))
    if finite and 0 <= momentum < 1 and weight_decay >= 0 and 0 <= smoothing < 1:
        pretrain_resnet.check_args(args)
    else:
        with pytest.raises(UsageError, match="--momentum|--weight-decay|--label-smoothing"):
            pretrain_resnet.check_args(args)


@given(seed=st.integers(-(2**70), 2**70))
@ONCE
def test_a_seed_is_accepted_exactly_when_everything_it_seeds_takes_it(seed, tmp_path, env_kwargs):
    args = train_args(tmp_path, env_kwargs, seed=seed)
    if not 0 <= seed < 2**32:
        with pytest.raises(UsageError, match=r"--seed must lie in \[0, 2\*\*32\)"):
            train_blockdrop.check_args(args)
        with pytest.raises(UsageError, match=r"--seeds must lie in \[0, 2\*\*32\)"):
            compare.check_args(compare.Args(seeds=(0, seed)))
        return
    train_blockdrop.check_args(args)
    compare.check_args(compare.Args(seeds=(seed,)))
    torch.Generator().manual_seed(seed)
    np.random.seed(seed)  # SB3's set_random_seed
    BlockDropVectorEnv(num_envs=2, **env_kwargs).reset(seed=seed + 1)  # the scripts seed envs from seed + i
