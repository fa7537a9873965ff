"""best.pt: a training run keeps the agent of its best validation walk, so an epoch that scored
higher than the last one is never lost, across resumes and stages."""

import json

import pytest
import torch

from agents import pretrained
from agents.reinforce import load_agent
from experiments import train_blockdrop
from experiments.cli import UsageError

from .test_scripts import train_args


@pytest.fixture
def walk_rewards(monkeypatch):
    """Script the mean reward of each validation walk (the walks themselves run for real)."""
    rewards: list[float] = []
    real = train_blockdrop.evaluate

    def scripted(env, policy, flops):
        walk = real(env, policy, flops)
        walk.reward_mean = rewards.pop(0)
        return walk

    monkeypatch.setattr(train_blockdrop, "evaluate", scripted)
    return rewards


def saved(path):
    return torch.load(path, weights_only=True)


def test_best_pt_holds_the_agent_of_the_best_walk_not_the_last(tmp_path, env_kwargs, walk_rewards):
    walk_rewards += [0.1, 0.5, 0.3, 0.2]
    summary = train_blockdrop.main(train_args(tmp_path, env_kwargs, stage="finetune", finetune_epochs=4))
    best, last = saved(tmp_path / "run" / "best.pt"), saved(tmp_path / "run" / "agent.pt")
    assert best["epoch"] == summary["best"]["epoch"] == 2 and summary["best"]["reward_mean"] == 0.5
    assert last["epoch"] == 4

    # best.pt is the agent of epoch 2, policy and finetuned ResNet: that of a run stopped there.
    walk_rewards += [0.1, 0.5]
    train_blockdrop.main(train_args(tmp_path / "b", env_kwargs, stage="finetune", finetune_epochs=4, stop_after=2))
    at_two = saved(tmp_path / "b" / "run" / "agent.pt")
    for part in ("policy", "resnet"):
        for key, value in at_two[part].items():
            assert torch.equal(best[part][key], value), (part, key)
    assert not torch.equal(best["policy"]["keep_head.weight"], last["policy"]["keep_head.weight"])
    assert load_agent(tmp_path / "run" / "best.pt", device="cpu").resnet_state is not None  # loads like agent.pt


def test_a_shipped_best_agent_records_the_walk_it_was_chosen_on(tmp_path, env_kwargs, walk_rewards, monkeypatch):
    walk_rewards += [0.5, 0.1]
    train_blockdrop.main(train_args(tmp_path, env_kwargs, stage="finetune", finetune_epochs=2))
    monkeypatch.setattr(pretrained, "SHIPPED", tmp_path / "trained")
    pretrained.ship(tmp_path / "run" / "best.pt", "best-one", {"evaluated": "here"})
    card = json.loads((tmp_path / "trained" / "best-one.json").read_text())
    assert card["trained"]["epoch"] == card["trained"]["best"]["epoch"] == 1
    assert card["trained"]["best"]["reward_mean"] == 0.5 and card["trained"]["best"]["stage"] == "finetune"


def test_a_resumed_run_keeps_the_best_of_the_walks_before_the_interrupt(tmp_path, env_kwargs, walk_rewards):
    walk_rewards += [0.1, 0.5, 0.3]
    train_blockdrop.main(train_args(tmp_path, env_kwargs, stage="finetune", finetune_epochs=4, stop_after=3))
    walk_rewards += [0.4]
    summary = train_blockdrop.main(train_args(tmp_path, env_kwargs, stage="finetune", finetune_epochs=4, resume=True))
    assert summary["best"]["epoch"] == saved(tmp_path / "run" / "best.pt")["epoch"] == 2


@pytest.mark.parametrize(
    "step, rewards, best",
    [
        (1.0, [0.9, 0.9, 0.1, 0.05], 3),  # curriculum walks with forced blocks never count
        (15.0, [0.9, 0.95, 0.1, 0.05], 3),  # a full-policy curriculum walk counts, but finetuning starts afresh
    ],
)
def test_only_walks_of_a_policy_deciding_every_block_count_and_each_stage_starts_afresh(
    tmp_path, env_kwargs, walk_rewards, monkeypatch, step, rewards, best
):
    walk_rewards += rewards
    kept = []
    real = train_blockdrop.Training.keep_if_best

    def spy(job, epoch, stage, walk):
        if real(job, epoch, stage, walk):
            kept.append((epoch, stage))
            return True
        return False

    monkeypatch.setattr(train_blockdrop.Training, "keep_if_best", spy)
    summary = train_blockdrop.main(train_args(tmp_path, env_kwargs, curriculum_step=step))
    expected = {1.0: [(3, "finetune")], 15.0: [(1, "curriculum"), (2, "curriculum"), (3, "finetune")]}[step]
    assert kept == expected and summary["best"]["epoch"] == best and summary["best"]["stage"] == "finetune"


def test_walks_of_the_test_split_choose_nothing(tmp_path, env_kwargs):
    args = train_args(tmp_path, env_kwargs, stage="finetune", finetune_epochs=1, eval_split="test")
    summary = train_blockdrop.main(args)
    assert summary["best"] is None and not (tmp_path / "run" / "best.pt").exists()


def test_a_fresh_run_refuses_a_folder_holding_a_best_agent_and_overwrite_removes_it(tmp_path, env_kwargs):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"a run's best agent")
    with pytest.raises(UsageError, match=r"best.pt exists: pass --resume .* or --overwrite"):
        train_blockdrop.main(train_args(tmp_path, env_kwargs, stage="finetune", finetune_epochs=1, eval_split="test"))
    train_blockdrop.main(
        train_args(tmp_path, env_kwargs, stage="finetune", finetune_epochs=1, eval_split="test", overwrite=True)
    )
    assert not (run / "best.pt").exists()


def resnet_of(path):
    return torch.load(path, weights_only=True)["resnet"]


def test_an_agent_trained_on_a_resnet_other_than_the_shipped_one_carries_it(tmp_path, env_kwargs):
    """A curriculum leaves the ResNet as it found it, but evaluating the agent needs that ResNet:
    from --resnet-checkpoint or from --init's finetuned one, every saved agent holds it."""
    finetuned = tmp_path / "a"
    train_blockdrop.main(train_args(finetuned, env_kwargs, stage="finetune", finetune_epochs=1))
    given = torch.load(env_kwargs["checkpoint"], weights_only=True)["state_dict"]
    from_init = resnet_of(finetuned / "run" / "agent.pt")
    assert any(not torch.equal(given[k], from_init[k]) for k in given)  # finetuning changed it

    curriculum = dict(stage="curriculum", curriculum_epochs=2, curriculum_step=15)  # walks decide every block
    train_blockdrop.main(train_args(tmp_path / "b", env_kwargs, **curriculum))
    train_blockdrop.main(
        train_args(
            tmp_path / "c", env_kwargs, **curriculum, init=str(finetuned / "run" / "agent.pt"), resnet_checkpoint=None
        )
    )
    for run, expected in (("b", given), ("c", from_init)):
        for saved in ("agent.pt", "best.pt"):
            held = resnet_of(tmp_path / run / "run" / saved)
            assert held is not None and all(torch.equal(held[k], expected[k]) for k in expected), (run, saved)


def test_an_agent_on_the_shipped_resnet_does_not_carry_a_copy(tmp_path, env_kwargs):
    train_blockdrop.main(
        train_args(
            tmp_path, env_kwargs, stage="curriculum", curriculum_epochs=1, curriculum_step=15, resnet_checkpoint=None
        )
    )
    assert resnet_of(tmp_path / "run" / "agent.pt") is None  # evaluated on the shipped ResNet, as trained
