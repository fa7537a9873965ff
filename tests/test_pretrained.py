"""Shipped agents by name: listed, loaded in Python and by the evaluate script."""

import json
import re
from pathlib import Path

import pytest
import torch

import agents.pretrained as pretrained
from agents.pretrained import list_policies, load_policy, policy_card
from agents.reinforce import BlockDropAgent, save_agent
from blockdrop_env.resnet import CifarResNet
from experiments import evaluate as evaluate_script
from experiments.cli import UsageError


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A folder of shipped agents holding one, ``tiny-agent``, trained on nothing."""
    monkeypatch.setattr(pretrained, "SHIPPED", tmp_path / "trained")
    (tmp_path / "trained").mkdir()
    torch.manual_seed(0)
    agent = BlockDropAgent(device="cpu", policy_input=16)
    save_agent(tmp_path / "trained" / "tiny-agent.pt", agent)
    (tmp_path / "trained" / "tiny-agent.json").write_text(json.dumps({"accuracy": 0.5}))
    return agent


def test_shipped_agents_are_listed_and_load_by_name_or_path(shipped, tmp_path):
    assert list_policies() == ["tiny-agent"]
    agent = load_policy("tiny-agent", device="cpu")
    assert agent.policy.input_size == 16
    for key, value in shipped.policy.state_dict().items():
        assert torch.equal(agent.policy.state_dict()[key], value)
    assert load_policy(tmp_path / "trained" / "tiny-agent.pt", device="cpu").policy.input_size == 16
    assert policy_card("tiny-agent") == {"accuracy": 0.5}
    with pytest.raises(
        FileNotFoundError, match=r"neither an agent checkpoint nor a shipped agent \(shipped: tiny-agent\)"
    ):
        load_policy("no-such-agent")


def test_evaluate_lists_and_evaluates_shipped_agents_by_name(shipped, env_kwargs, tmp_path, capsys):
    assert evaluate_script.main(evaluate_script.Args(list_policies=True)) == []
    assert capsys.readouterr().out.splitlines() == ["tiny-agent"]
    common = dict(device="cpu", data_dir=str(env_kwargs["data_dir"]), checkpoint=env_kwargs["checkpoint"], plots=False)
    rows = evaluate_script.main(
        evaluate_script.Args(policy="tiny-agent", baselines="full", out=tmp_path / "e", **common)
    )
    assert [r["name"] for r in rows] == ["BlockDrop (tiny-agent)", "full ResNet"]
    with pytest.raises(UsageError, match="no-such-agent is neither"):
        evaluate_script.main(evaluate_script.Args(policy="no-such-agent", out=tmp_path / "e", **common))


def test_evaluate_ships_a_trained_agent_without_its_resume_state(shipped, env_kwargs, tmp_path):
    from experiments import train_blockdrop

    from .test_scripts import train_args

    train_blockdrop.main(train_args(tmp_path, env_kwargs, stage="curriculum", curriculum_epochs=1))
    common = dict(device="cpu", data_dir=str(env_kwargs["data_dir"]), checkpoint=env_kwargs["checkpoint"], plots=False)
    run = tmp_path / "run" / "agent.pt"
    with pytest.raises(UsageError, match="--ship needs"):
        evaluate_script.main(
            evaluate_script.Args(policy=str(run), ship="x", baselines="none", out=tmp_path / "e", **common)
        )
    with pytest.raises(UsageError, match="--ship evaluates on the whole split"):
        evaluate_script.main(
            evaluate_script.Args(policy=str(run), ship="x", baselines="full", limit=8, out=tmp_path / "e", **common)
        )
    with pytest.raises(UsageError, match="--also needs --policy"):
        evaluate_script.main(evaluate_script.Args(also=("tiny-agent",), out=tmp_path / "e", **common))
    rows = evaluate_script.main(  # another agent beside it stays out of the card
        evaluate_script.Args(
            policy=str(run), also=("tiny-agent",), ship="new-one", baselines="full", out=tmp_path / "e", **common
        )
    )
    assert [r["name"] for r in rows] == ["BlockDrop (new-one)", "BlockDrop (tiny-agent)", "full ResNet"]
    assert list_policies() == ["new-one", "tiny-agent"]
    saved = torch.load(pretrained.SHIPPED / "new-one.pt", weights_only=True)
    assert "optimizer" not in saved and "envs" not in saved and saved["trained"]["epoch"] == 1
    card = policy_card("new-one")
    assert card["trained"]["args"]["curriculum_epochs"] == "1" and [r["name"] for r in card["rows"]] == [
        "BlockDrop (new-one)",
        "full ResNet",
    ]
    agent = load_policy("new-one", device="cpu")
    trained = load_policy(run, device="cpu")
    assert all(torch.equal(agent.policy.state_dict()[k], v) for k, v in trained.policy.state_dict().items())


def test_every_shipped_agent_loads_and_carries_its_card():
    names = list_policies()
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    first = re.search(r"experiments\.evaluate --policy (\S+) --baselines full --out runs/evaluate/first", readme)
    assert first and first.group(1) in names  # the README's first command evaluates a shipped agent
    for name in names:
        agent = load_policy(name, device="cpu")
        card = policy_card(name)
        assert card["name"] == name and card["trained"]["command"] and card["evaluated"]
        assert [r["name"] for r in card["rows"]] == [f"BlockDrop ({name})", "full ResNet"]
        depth = int(card["trained"]["args"].get("depth", 32))  # cards from before --depth: ResNet-32
        assert agent.policy.num_blocks == CifarResNet(depth).num_blocks and 0 < card["rows"][0]["accuracy"] <= 1


def test_evaluate_replaces_neither_a_shipped_agent_nor_a_training_runs_summary_without_overwrite(
    shipped, env_kwargs, tmp_path
):
    common = dict(device="cpu", data_dir=str(env_kwargs["data_dir"]), checkpoint=env_kwargs["checkpoint"], plots=False)
    with pytest.raises(UsageError, match="tiny-agent is a shipped agent already.*--overwrite"):
        evaluate_script.main(
            evaluate_script.Args(policy="tiny-agent", ship="tiny-agent", baselines="full", out=tmp_path / "e", **common)
        )
    with pytest.raises(UsageError, match="letters, digits"):
        evaluate_script.main(
            evaluate_script.Args(policy="tiny-agent", ship="../evil", baselines="full", out=tmp_path / "e", **common)
        )
    assert not (tmp_path / "e").exists()  # refused before any work: no folder left behind
    run = tmp_path / "run"
    run.mkdir()
    (run / "agent.pt").write_bytes(b"a training run's checkpoint")
    (run / "summary.json").write_text("{}")
    with pytest.raises(UsageError, match="holds a training run"):
        evaluate_script.main(evaluate_script.Args(policy="tiny-agent", baselines="none", out=run, **common))
    assert (run / "summary.json").read_text() == "{}"
    evaluate_script.main(evaluate_script.Args(policy="tiny-agent", baselines="none", out=run, overwrite=True, **common))
    assert json.loads((run / "summary.json").read_text())["rows"][0]["name"] == "BlockDrop (tiny-agent)"
