"""Smoke runs of the experiment scripts, and exact resumption of agent training."""

import contextlib
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

from agents.reinforce import BlockDropAgent, load_agent
from blockdrop_env.checkpoint import load_resnet
from blockdrop_env.device import training_dtype
from blockdrop_env.inference import ForwardOptions
from experiments import evaluate as evaluate_script
from experiments import pretrain_resnet, train_blockdrop
from experiments.cli import UsageError

from .conftest import requires_real_data


@requires_real_data
def test_pretrain_smoke_run_on_real_images(tmp_path):
    out = tmp_path / "r32.pt"
    summary = pretrain_resnet.main(pretrain_resnet.Args(epochs=1, batch_size=64, limit=256, out=out, device="cpu"))
    model, meta = load_resnet(out)
    assert meta["epochs"] == 1 and meta["test_accuracy"] == summary["test_accuracy"]
    for key in ("command", "git_commit", "date", "normalization", "train_seconds"):
        assert key in meta
    assert not out.with_suffix(".resume.pt").exists() and out.with_suffix(".json").exists()


@contextlib.contextmanager
def pretraining_dies_after_its_first_resume_file(monkeypatch):
    """The pretraining run inside dies right after writing its first resume file (a crash)."""

    class Crash(Exception):
        pass

    def save_then_crash(obj, path):
        original_save(obj, path)
        raise Crash

    original_save = pretrain_resnet.atomic_save
    monkeypatch.setattr(pretrain_resnet, "atomic_save", save_then_crash)
    with pytest.raises(Crash):
        yield
    monkeypatch.setattr(pretrain_resnet, "atomic_save", original_save)


def test_pretrain_resume_continues_exactly(synthetic_dir, tmp_path, monkeypatch):
    args = dict(batch_size=16, device="cpu", data_dir=str(synthetic_dir), epochs=2)
    pretrain_resnet.main(pretrain_resnet.Args(**args, out=tmp_path / "straight.pt"))
    with pretraining_dies_after_its_first_resume_file(monkeypatch):
        pretrain_resnet.main(pretrain_resnet.Args(**args, out=tmp_path / "resumed.pt"))
    assert not (tmp_path / "resumed.pt").exists() and (tmp_path / "resumed.resume.pt").exists()
    pretrain_resnet.main(pretrain_resnet.Args(**args, out=tmp_path / "resumed.pt", resume=True))
    straight = load_resnet(tmp_path / "straight.pt")[0].state_dict()
    resumed = load_resnet(tmp_path / "resumed.pt")[0].state_dict()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def train_args(tmp_path, env_kwargs, **kw):
    base = dict(
        stage="both",
        curriculum_epochs=2,
        finetune_epochs=2,
        batch_size=16,
        finetune_batch_size=8,
        out=tmp_path / "run",
        checkpoint_every=1,
        eval_every=1,
        device="cpu",
        data_dir=str(env_kwargs["data_dir"]),
        resnet_checkpoint=env_kwargs["checkpoint"],
        seed=3,
    )
    return train_blockdrop.Args(**{**base, **kw})


def test_train_then_evaluate_smoke(tmp_path, env_kwargs):
    summary = train_blockdrop.main(train_args(tmp_path, env_kwargs))
    assert summary["epoch"] == 4 and summary["stage"] == "finetune"
    assert (tmp_path / "run" / "summary.json").exists() and list((tmp_path / "run" / "tb").iterdir())
    agent = load_agent(tmp_path / "run" / "agent.pt", device="cpu")
    assert agent.resnet_state is not None  # finetuned ResNet saved with the policy
    rows = evaluate_script.main(
        evaluate_script.Args(
            policy=tmp_path / "run" / "agent.pt",
            device="cpu",
            data_dir=str(env_kwargs["data_dir"]),
            checkpoint=env_kwargs["checkpoint"],
            out=tmp_path / "eval",
            batch_size=8,
            baselines="all",
        )
    )
    names = [r["name"] for r in rows]
    assert names[0].startswith("BlockDrop") and "full ResNet" in names and "FirstK k=15" in names
    saved = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert saved["rows"][0]["accuracy"] == rows[0]["accuracy"]
    for png in ("accuracy_vs_flops", "blocks_hist", "usage_per_class", "frequent_policies"):
        assert (tmp_path / "eval" / f"{png}.png").stat().st_size > 1000
    assert "| full ResNet |" in (tmp_path / "eval" / "table.md").read_text()


@pytest.mark.parametrize("split_at", [1, 3])  # in curriculum learning, in finetuning
def test_resume_gives_identical_parameters(tmp_path, env_kwargs, split_at):
    straight = train_args(tmp_path / "a", env_kwargs)
    train_blockdrop.main(straight)
    first = train_args(tmp_path / "b", env_kwargs, stop_after=split_at)
    train_blockdrop.main(first)
    train_blockdrop.main(train_args(tmp_path / "b", env_kwargs, resume=True))
    a = torch.load(tmp_path / "a" / "run" / "agent.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "run" / "agent.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    for part in ("policy", "resnet"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)


def test_mid_curriculum_evaluation_keeps_the_forced_blocks_on(tmp_path, env_kwargs, monkeypatch):
    # A greedy policy that drops every block: in epoch 0 the curriculum decides only the last
    # block, so the test walk must still run the 14 forced ones (as the authors' test does).
    monkeypatch.setattr(BlockDropAgent, "greedy", lambda self, images: torch.zeros(len(images), 15, dtype=torch.bool))
    summary = train_blockdrop.main(train_args(tmp_path, env_kwargs, stage="curriculum", curriculum_epochs=1))
    assert summary["val"]["blocks_mean"] == 14 and summary["val"]["blocks_std"] == 0


def test_resume_without_checkpoint_fails_clearly(tmp_path, env_kwargs):
    with pytest.raises(UsageError, match="no checkpoint"):
        train_blockdrop.main(train_args(tmp_path, env_kwargs, resume=True))


def test_compare_end_to_end_and_resume(tmp_path, env_kwargs, monkeypatch):
    from experiments import compare

    args = compare.Args(
        algorithms=("blockdrop", "ppo", "a2c"),
        seeds=(0, 1),
        engine="serial",
        env_steps=64,
        num_envs=16,
        eval_points=2,
        curriculum=True,
        name="tiny",
        out_root=tmp_path,
        checkpoint=env_kwargs["checkpoint"],
        device="cpu",
        data_dir=str(env_kwargs["data_dir"]),
    )
    results = compare.main(args)
    out = tmp_path / "tiny"
    assert len(results) == 6 and all(r["env_steps"] == 64 for r in results)
    assert all(len(r["curve"]) == 2 and r["curve"][-1]["env_steps"] == 64 for r in results)
    assert all(r["env_steps_per_second"] > 0 for r in results)
    table = (out / "table.md").read_text()
    assert all(f"| {a} | 2 |" in table for a in args.algorithms)
    for png in ("reward_vs_env_steps", "accuracy_vs_blocks", "iqm_reward"):
        assert (out / f"{png}.png").stat().st_size > 1000
    statistics = (out / "statistics.md").read_text()
    assert all(f"| {a} | 2 |" in statistics for a in args.algorithms) and "| blockdrop | ppo |" in statistics
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["iqm"]) == set(args.algorithms) and len(summary["probability_of_improvement"]) == 6

    def fail(*a, **k):
        raise AssertionError("finished runs must not run again")

    monkeypatch.setattr(compare, "run_one", fail)
    assert [r["final"] for r in compare.main(args)] == [r["final"] for r in results]


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize("algo", ["blockdrop", "ppo", "a2c", "trpo"])
def test_an_interrupted_compare_run_continues_from_its_save_as_if_never_stopped(
    tmp_path, env_kwargs, algo, monkeypatch
):
    from experiments import compare, compare_runs, compare_training

    if algo == "trpo":
        pytest.importorskip("sb3_contrib")
    common = dict(
        algorithms=(algo,),
        seeds=(0,),
        engine="serial",
        env_steps=128,  # PPO and TRPO: two rollouts of 4 x 16 env steps, saved between them
        num_envs=16,
        eval_points=4,
        save_every=32,
        curriculum=True,
        checkpoint=env_kwargs["checkpoint"],
        device="cpu",
        data_dir=str(env_kwargs["data_dir"]),
    )
    learners = []  # every agent or SB3 model the runs build, to compare their final parameters

    def watch_learners():
        def kept(make):
            return lambda *a, **k: learners.append(make(*a, **k)) or learners[-1]

        monkeypatch.setattr(compare_training, "make_algorithm", kept(compare_training.make_algorithm))
        monkeypatch.setattr(compare_training, "BlockDropAgent", kept(compare_training.BlockDropAgent))

    watch_learners()
    straight = compare.main(compare.Args(out_root=tmp_path / "straight", **common))[0]
    assert "resumed_from" not in straight
    straight_params = learners[-1].policy.state_dict()

    args = compare.Args(out_root=tmp_path / "stopped", **common)
    save = compare_runs.RunSaver.maybe_save

    def save_then_crash(self, env_steps, *a):
        save(self, env_steps, *a)
        if self.saved_at == 64:  # the run dies after its save half-way, evaluations on either side
            raise _Interrupted

    monkeypatch.setattr(compare_runs.RunSaver, "maybe_save", save_then_crash)
    with pytest.raises(_Interrupted):
        compare.main(args)
    resume_file = tmp_path / "stopped" / "default" / "runs" / f"{algo}_seed0.resume.pt"
    assert resume_file.is_file() and not (resume_file.parent / f"{algo}_seed0.json").exists()
    monkeypatch.undo()

    with pytest.raises(UsageError, match=r"resume\.pt ran with other settings \(penalty: -1\.0 -> -2\.0\)"):
        compare.main(compare.Args(out_root=tmp_path / "stopped", **{**common, "penalty": -2.0}))
    watch_learners()
    resumed = compare.main(args)[0]
    assert resumed["resumed_from"] == 64 and not resume_file.exists()
    assert [p["env_steps"] for p in resumed["curve"]] == [32, 64, 96, 128]
    assert resumed["curve"] == straight["curve"]
    # The same parameters, bit for bit: the same draws of images, actions and minibatches.
    resumed_params = learners[-1].policy.state_dict()
    for key, value in straight_params.items():
        assert torch.equal(resumed_params[key], value), key


def test_compare_curriculum_schedule():
    from experiments.compare import Args
    from experiments.compare_training import decided_at

    args = Args(env_steps=1500, curriculum_fraction=0.5)
    assert [decided_at(s, args, 15) for s in (0, 49, 50, 700, 749, 750, 1500)] == [1, 1, 2, 15, 15, 15, 15]


def test_bench_smoke(tmp_path, env_kwargs):
    from experiments import bench

    result = bench.main(
        bench.Args(
            device="cpu",
            reference_batch=8,
            env_batches=(4, 8),
            agent_batch=8,
            finetune_batch=4,
            pretrain_batch=8,
            min_seconds=0.01,
            sb3_steps=32,
            epoch_images=20,
            compile=None,  # the compiled path is checked in tests/test_inference.py
            deploy_agents=("r32-in16-finetune-p2-cpu",),
            deploy_depths=(20,),
            out=tmp_path,
            data_dir=str(env_kwargs["data_dir"]),
            checkpoint=env_kwargs["checkpoint"],
        )
    )
    rows = result["rows"]
    assert rows[0]["name"].startswith("reference") and rows[0]["ratio_to_reference"] == 1.0
    assert all(r["value"] > 0 for r in rows)
    assert sum("(the env's default)" in r["name"] for r in rows) == 1
    # Where training defaults to bf16 (CPUs with native bf16), every training figure also in fp32.
    half = training_dtype(torch.device("cpu")) != torch.float32
    sb3 = [r["name"].split(" through")[0] for r in rows if r["name"].startswith("SB3")]
    assert sb3[:3] == ["SB3 PPO", "SB3 A2C", "SB3 TRPO"] and len(sb3) == 2 + len(bench.TRPO_VARIANTS)
    assert "SB3 TRPO (sub_sampling_factor=4)" in sb3 and "SB3 TRPO (cg_max_steps=15)" in sb3
    pair = [r for r in rows if r["name"].startswith("two actions")]
    assert len(pair) == 3 * (4 + 4)  # stacked, shared prefix, speed-up at 4 stages of the R32 and the R110
    finetune = [r for r in rows if r["name"].startswith("BlockDrop finetuning")]
    # Per precision: the R32 and the R110, two block counts each, masked, kept only and the speed-up.
    assert len(finetune) == (2 if half else 1) * 2 * 2 * 3
    assert [r["name"].split(", ")[-1] for r in finetune[:3]] == ["masked", "kept", "speed-up"]
    assert "ResNet-110, greedy keeps 18 of 54 blocks" in finetune[6]["name"]
    assert len(rows) == (16 if half else 10) + len(finetune) + len(pair) + len(sb3)
    trained = [r["name"].split(",")[0] for r in rows if "fp32" in r["name"].split(",")[-1]]
    if half:
        assert trained == [
            "vector env step",
            "BlockDrop curriculum step",
            "BlockDrop curriculum epoch of 24 images",
        ] + ["BlockDrop finetuning step"] * 8 + ["pretraining step of the ResNet-32"]
    else:
        assert trained == []
    agreement = result["agreement"]
    default = ForwardOptions.for_device(torch.device("cpu")).dtype
    expected = (
        ["bf16 autocast", "fp32", "fp16 autocast"]
        if default == "bfloat16"
        else ["fp32", "bf16 autocast", "fp16 autocast"]
    )
    assert [a["forward"].split(",")[0] for a in agreement] == expected * 2
    assert all(a["images"] == 16 for a in agreement)
    assert all(a["identical_rewards"] == 1.0 for a in agreement if a["forward"].endswith("(the env's default)"))
    assert "| measurement |" in (tmp_path / "bench.md").read_text()
    assert "Incomplete" not in (tmp_path / "bench.md").read_text()
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["rows"] == rows and saved["complete"] is True


def test_bench_deploy_section_measures_agents_beside_the_static_resnets_they_are_compared_with(tmp_path, env_kwargs):
    from experiments import bench

    args = bench.Args(
        device="cpu",
        sections=("deploy",),
        reference_batch=8,
        min_seconds=0.01,
        deploy_agents=("r32-in16-finetune-p2-cpu",),
        deploy_depths=(20,),
        latency_images=5,
        throughput_batches=(4, 16),
        out=tmp_path,
        data_dir=str(env_kwargs["data_dir"]),
        checkpoint=env_kwargs["checkpoint"],
    )
    rows = {r["name"]: r for r in bench.main(args)["deploy"]}
    assert list(rows) == ["ResNet-20", "ResNet-32", "r32-in16-finetune-p2-cpu"]  # the ResNet-32: the reference
    full, agent, small = rows["ResNet-32"], rows["r32-in16-finetune-p2-cpu"], rows["ResNet-20"]
    assert set(full["speedup"].values()) == {1.0}
    assert agent["reference"] == small["reference"] == 32 and agent["latency_images"] == 5
    assert small["speedup"]["flops"] == full["flops"] / small["flops"] > 1
    assert 0 < agent["flops"] < full["flops"] and 0 <= agent["accuracy"] <= 1
    for row in rows.values():
        for threads in ("1 thread", "all threads"):
            assert 0 < row[f"latency {threads}"]["p50_ms"] <= row[f"latency {threads}"]["p90_ms"]
        assert row["throughput batch 4"] > 0 and row["throughput batch 16"] > 0
    assert "| r32-in16-finetune-p2-cpu |" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "deploy.png").stat().st_size > 0


def test_bench_run_cut_off_keeps_the_figures_it_finished(tmp_path, env_kwargs, monkeypatch):
    from experiments import bench

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # what a time limit looks like from inside

    monkeypatch.setattr(bench, "make_algorithm", killed)
    args = bench.Args(
        device="cpu",
        sections=("finetune", "sb3", "agreement"),
        reference_batch=8,
        finetune_batch=4,
        min_seconds=0.01,
        out=tmp_path,
        data_dir=str(env_kwargs["data_dir"]),
        checkpoint=env_kwargs["checkpoint"],
    )
    with pytest.raises(KeyboardInterrupt):
        bench.main(args)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["complete"] is False and saved["agreement"] == []
    names = [r["name"].split(",")[0] for r in saved["rows"]]
    assert names[0] == "reference: fp32 eager masked ResNet-32 forward"
    # Steps masked and kept, and their speed-ups (again in fp32 where bf16 is the default).
    assert set(names[1:]) == {"BlockDrop finetuning step", "BlockDrop finetuning"}
    assert saved["rows"][1]["ratio_to_reference"] == saved["rows"][1]["images_per_s"] / saved["rows"][0]["value"]
    assert "Incomplete" in (tmp_path / "bench.md").read_text()


def test_device_run_packs_what_each_command_wrote_even_when_one_fails(tmp_path):
    script = Path(__file__).resolve().parents[1] / "experiments" / "device_run.sh"
    out = tmp_path / "out"
    commands = ["mkdir -p runs/a && echo 1 > runs/a/f", "mkdir -p results/b && echo 2 > results/b/g && exit 3"]
    proc = subprocess.run(
        ["bash", str(script), *commands], cwd=tmp_path, env={**os.environ, "OUT": str(out)}, capture_output=True
    )
    assert proc.returncode == 1
    with tarfile.open(out / "results.tgz") as tar:
        assert sorted(tar.getnames()) == ["results/b/g", "runs/a/f"]
    log = (out / "log.txt").read_text()
    assert log.count("=== took") == 2 and "=== failed: mkdir -p results/b" in log


def test_bench_records_a_failing_optional_path_and_keeps_the_rest(tmp_path, env_kwargs):
    from experiments import bench

    args = bench.Args(
        device="cpu", out=tmp_path, data_dir=str(env_kwargs["data_dir"]), checkpoint=env_kwargs["checkpoint"]
    )
    saved, seen = [], []
    failures = bench.Failures(on_failure=lambda: saved.append(len(failures)))
    default = ForwardOptions.for_device(torch.device("cpu"))
    on_gpu_only = ForwardOptions.for_device(torch.device("cpu"), fused="one")  # Triton finds no GPU here
    rows = bench.agreement(args, [default, on_gpu_only], failures, on_row=seen.append)
    assert [r["forward"] for r in rows] == [bench.describe(default, torch.device("cpu"))] * 2 and seen == rows
    assert len(failures) == 2 and all("fused Triton blocks" in f for f in failures), failures
    assert saved == [1, 2]  # each failure reported as it happened
    with pytest.raises(ValueError, match="fused Triton blocks run on CUDA"):  # without a Failures list, it propagates
        bench.agreement(args, [on_gpu_only])


def test_fused_env_blocks_take_precedence_over_compiling_the_env_forward():
    from experiments.forward_args import ForwardArgs

    auto = {"precision": "auto"}
    assert ForwardArgs(compile="default").env_forward() == {"compile": "default", "fused": None, **auto}
    assert ForwardArgs(compile="default", fused="one").env_forward() == {"compile": None, "fused": "one", **auto}


class Fetched(Exception):
    """Raised by a stand-in for the download: the script asked for it."""


@pytest.mark.parametrize("script", ["train_blockdrop", "evaluate", "compare", "bench", "pretrain_resnet"])
def test_every_script_that_loads_cifar_takes_download(script, tmp_path, monkeypatch):
    import importlib

    module = importlib.import_module(f"experiments.{script}")
    asked = []

    def fetch(*args, **kwargs):
        asked.append(kwargs.get("download", args[-1] if args else None))
        raise Fetched

    # pretrain_resnet passes --download to its loads; the others fetch through DataArgs.fetch_data first
    from experiments import cli

    monkeypatch.setattr(*((module, "load_cifar") if script == "pretrain_resnet" else (cli, "find_dataset")), fetch)
    out = "out_root" if script == "compare" else "out"
    target = tmp_path / ("r.pt" if script == "pretrain_resnet" else "o")
    args = module.Args(download=True, data_dir=str(tmp_path / "data"), **{out: target})
    with pytest.raises(Fetched):
        module.main(args)
    assert asked == [True]


def test_download_goes_to_the_named_folder_else_the_users_cache(tmp_path, monkeypatch):
    from blockdrop_env.data import ENV_VAR, download_dir

    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert download_dir() == tmp_path / "cache" / "blockdrop" / "data"
    assert download_dir(tmp_path / "mine") == tmp_path / "mine"
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    assert download_dir() == tmp_path / "env"


def test_a_long_cpu_run_says_what_it_will_cost_and_how_to_ask_for_less(tmp_path, env_kwargs, monkeypatch, capsys):
    clock = iter(range(0, 10**6, 300))  # three steps seem to take 300 s
    monkeypatch.setattr(train_blockdrop, "perf_counter", lambda: next(clock))
    train_blockdrop.main(train_args(tmp_path, env_kwargs, stage="curriculum"))
    out = capsys.readouterr()
    note = "note: this run's 2 curriculum epochs of 5 steps will take about 17 min at the speed measured here"
    assert note in out.out + out.err and "--curriculum-epochs, --limit or --stop-after" in out.out + out.err


def test_a_short_run_says_nothing_of_its_cost(tmp_path, env_kwargs, capsys):
    train_blockdrop.main(train_args(tmp_path, env_kwargs, stage="curriculum"))
    out = capsys.readouterr()
    assert "note:" not in out.out + out.err
