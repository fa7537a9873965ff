"""The ResNet's optimiser in joint finetuning: the policy's Adam (the authors'), or an SGD of its own
with the recipe the ResNets were pretrained with."""

import pytest
import torch

from agents.reinforce import BlockDropAgent, JointOptimizer, ReinforceConfig, make_optimizer, train_step
from blockdrop_env.checkpoint import atomic_save, load_checkpoint
from blockdrop_env.vector_env import BlockDropVectorEnv
from experiments import train_blockdrop
from experiments.cli import UsageError

from .test_scripts import train_args


def finetuning(env_kwargs, **config):
    env = BlockDropVectorEnv(num_envs=8, split="train", penalty=-2.0, **env_kwargs)
    env.reset(seed=0)
    agent = BlockDropAgent(device="cpu", precision="fp32")
    config = ReinforceConfig(lr=1e-3, beta=0.0, finetune=True, **config)
    return agent, env, config, make_optimizer(agent, env, config)


def test_the_resnet_takes_sgd_steps_of_its_own_while_the_policy_keeps_adam(env_kwargs):
    agent, env, config, optimizer = finetuning(env_kwargs, resnet_optimizer="sgd")
    assert isinstance(optimizer, JointOptimizer)
    policy, resnet = optimizer.param_groups
    assert policy["lr"] == 1e-3 and resnet["lr"] == 0.01  # the default SGD rate
    assert (resnet["momentum"], resnet["nesterov"], resnet["weight_decay"]) == (0.9, True, 5e-4)
    weight = env.resnet.stem[0].weight
    head = agent.policy.keep_head.weight
    before_weight, before_head = weight.detach().clone(), head.detach().clone()

    train_step(agent, env, optimizer, config, torch.Generator().manual_seed(0))

    # Nesterov's first step from an empty momentum buffer: -lr (1 + momentum) (grad + decay * w).
    expected = before_weight - 0.01 * 1.9 * (weight.grad + 5e-4 * before_weight)
    assert torch.allclose(weight.detach(), expected, atol=1e-7)
    # Adam's first step moves each parameter by about lr (its gradient's sign).
    moved = (head.detach() - before_head)[head.grad != 0].abs()
    assert torch.allclose(moved, torch.full_like(moved, 1e-3), rtol=1e-2)


def test_adam_keeps_one_group_unless_the_resnet_has_its_own_rate(env_kwargs):
    agent, env, _, optimizer = finetuning(env_kwargs)
    params = list(agent.policy.parameters()) + list(env.resnet.parameters())
    assert isinstance(optimizer, torch.optim.Adam) and len(optimizer.param_groups) == 1
    # The state of a run from before the option (one Adam over both) loads into it.
    optimizer.load_state_dict(torch.optim.Adam(params, lr=1e-3).state_dict())

    _, env, _, own_rate = finetuning(env_kwargs, resnet_lr=1e-5)
    assert [g["lr"] for g in own_rate.param_groups] == [1e-3, 1e-5]
    assert [id(p) for p in own_rate.param_groups[1]["params"]] == [id(p) for p in env.resnet.parameters()]


def test_a_joint_optimiser_refuses_the_state_of_another_one(env_kwargs):
    agent, env, _, optimizer = finetuning(env_kwargs, resnet_optimizer="sgd")
    adam = torch.optim.Adam(list(agent.policy.parameters()) + list(env.resnet.parameters()))
    with pytest.raises(ValueError, match="expected the states of 2 optimisers; got 0"):
        optimizer.load_state_dict(adam.state_dict())


@pytest.mark.parametrize(("field", "value"), [("resnet_optimizer", "sgdm"), ("resnet_lr", 0.0), ("resnet_lr", -1.0)])
def test_a_config_with_a_bad_resnet_optimiser_is_refused(field, value):
    with pytest.raises(ValueError, match=field):
        ReinforceConfig(finetune=True, **{field: value})


def sgd_run(tmp_path, env_kwargs, **kw):
    sgd = dict(stage="finetune", finetune_resnet_optimizer="sgd", finetune_resnet_lr=0.02, lr_decay_at=0.5)
    return train_args(tmp_path, env_kwargs, **{**sgd, **kw})


def test_an_sgd_run_decays_both_rates_and_resumes_exactly(tmp_path, env_kwargs):
    train_blockdrop.main(sgd_run(tmp_path / "a", env_kwargs))
    train_blockdrop.main(sgd_run(tmp_path / "b", env_kwargs, stop_after=1))
    train_blockdrop.main(sgd_run(tmp_path / "b", env_kwargs, resume=True))
    a = torch.load(tmp_path / "a" / "run" / "agent.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "run" / "agent.pt", weights_only=True)
    for part in ("policy", "resnet"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    # The second epoch is past --lr-decay-at: each rate is a tenth of its own.
    rates = [g["lr"] for state in a["optimizer"]["joint"] for g in state["param_groups"]]
    assert rates == pytest.approx([1e-5, 2e-3])


def test_resume_refuses_another_resnet_optimiser_and_older_runs_resume_under_adam(tmp_path, env_kwargs):
    train_blockdrop.main(train_args(tmp_path, env_kwargs, stage="finetune", stop_after=1))
    with pytest.raises(UsageError, match="--finetune-resnet-optimizer: adam -> sgd"):
        train_blockdrop.main(sgd_run(tmp_path, env_kwargs, resume=True))
    # A run saved before the option (no such arguments) trained the ResNet in the policy's Adam.
    path = tmp_path / "run" / "agent.pt"
    state = load_checkpoint(path, required="policy")
    for key in ("finetune_resnet_optimizer", "finetune_resnet_lr"):
        del state["args"][key]
    atomic_save(state, path)
    assert train_blockdrop.main(train_args(tmp_path, env_kwargs, stage="finetune", resume=True))["epoch"] == 2


@pytest.mark.parametrize("rate", [0.0, float("nan")])
def test_a_bad_resnet_rate_is_a_usage_error(tmp_path, env_kwargs, rate):
    with pytest.raises(UsageError, match="--finetune-resnet-lr must be a finite number > 0"):
        train_blockdrop.main(sgd_run(tmp_path, env_kwargs, finetune_resnet_lr=rate))
