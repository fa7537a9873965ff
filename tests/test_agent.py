import copy
import math

import numpy as np
import pytest
import torch

from agents.baselines import DropOne, FirstK, FullPolicy, RandomK, drop_landscape
from agents.evaluation import evaluate
from agents.policy import PolicyNet
from agents.reinforce import (
    BlockDropAgent,
    ReinforceConfig,
    bounded,
    entropy_bonus,
    load_agent,
    make_optimizer,
    reinforce_loss,
    save_agent,
    train_step,
)
from blockdrop_env.env import BlockDropEnv
from blockdrop_env.resnet import CifarResNet, predict
from blockdrop_env.reward import blockdrop_reward
from blockdrop_env.vector_env import BlockDropVectorEnv
from blockdrop_env.wrappers import CurriculumVectorWrapper, CurriculumWrapper, curriculum_decided
from experiments import evaluate as evaluate_script

from .conftest import synthetic_learnable, trained_like


def entropy(p: float) -> float:
    return -p * math.log(p) - (1 - p) * math.log(1 - p)


def test_loss_equals_closed_form_on_a_hand_worked_case():
    probs = torch.tensor([[0.5, 0.9, 0.3], [0.2, 0.6, 0.7]], requires_grad=True)
    sampled = torch.tensor([[1, 0, 1], [0, 0, 1]], dtype=torch.bool)
    advantage = torch.tensor([2.0, -1.0])
    decide = torch.tensor([False, True, True])  # block 0 forced on by the curriculum
    loss, ent = reinforce_loss(probs, sampled, advantage, decide, alpha=0.8, beta=0.1, entropy="bernoulli")
    # s' = 0.8 s + 0.2 (1 - s): 0.9 -> 0.74, 0.3 -> 0.38, 0.6 -> 0.56, 0.7 -> 0.62.
    ll0 = math.log(1 - 0.74) + math.log(0.38)
    ll1 = math.log(1 - 0.56) + math.log(0.62)
    expected_entropy = ((entropy(0.74) + entropy(0.38)) + (entropy(0.56) + entropy(0.62))) / 2
    expected = -(2.0 * ll0 - 1.0 * ll1) / 2 - 0.1 * expected_entropy
    assert ent.item() == pytest.approx(expected_entropy, rel=1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.all(probs.grad[:, 0] == 0)  # forced blocks get no gradient
    assert torch.all(probs.grad[:, 1:] != 0)


def test_authors_entropy_bonus_covers_every_block_and_pulls_toward_one_over_e():
    probs = torch.tensor([[0.5, 0.9, 0.3], [0.2, 0.6, 0.7]], requires_grad=True)
    decide = torch.tensor([False, True, True])
    s = bounded(probs.detach(), 0.8)
    bonus = entropy_bonus(bounded(probs, 0.8), decide, "authors")
    assert bonus.item() == pytest.approx((-(s * s.log())).sum().item() / 2, rel=1e-6)
    bonus.backward()
    assert torch.all(probs.grad[:, 0] != 0)  # forced blocks are pulled too
    # d/ds' of -s' log s' vanishes at s' = 1/e: s = (1/e - 0.2) / 0.6 is the bonus's maximum.
    at_peak = torch.full((1, 3), (1 / math.e - 0.2) / 0.6, requires_grad=True)
    entropy_bonus(bounded(at_peak, 0.8), decide, "authors").backward()
    assert torch.allclose(at_peak.grad, torch.zeros(1, 3), atol=1e-6)
    # The Bernoulli bonus peaks at s = 1/2 instead and leaves forced blocks alone.
    at_half = torch.full((1, 3), 0.5, requires_grad=True)
    entropy_bonus(bounded(at_half, 0.8), decide, "bernoulli").backward()
    assert torch.allclose(at_half.grad, torch.zeros(1, 3), atol=1e-6)
    with pytest.raises(ValueError, match="entropy bonus"):
        entropy_bonus(s, decide, "shannon")


def test_policy_network_shapes_and_flops():
    policy = PolicyNet(15)
    probs, value = policy(torch.zeros(4, 3, 32, 32, dtype=torch.uint8))
    assert probs.shape == (4, 15) and value.shape == (4,)
    assert torch.all((probs > 0) & (probs < 1))
    assert len(policy.trunk.blocks) == 3  # ResNet-8
    assert policy.flops() == pytest.approx(
        2 * 9 * 3 * 16 * 1024 + sum(b.flops for b in policy.trunk.blocks) + 2 * 64 * 15
    )


@pytest.mark.parametrize(
    "epoch, step, expected", [(0, 1.0, 1), (4, 1.0, 5), (20, 1.0, 15), (0, 0.1, 1), (19, 0.1, 2), (3, 2.0, 8)]
)
def test_curriculum_schedule(epoch, step, expected):
    assert curriculum_decided(epoch, 15, step) == expected


def test_curriculum_wrappers_force_the_early_blocks(env_kwargs):
    vec = CurriculumVectorWrapper(BlockDropVectorEnv(num_envs=4, split="test", **env_kwargs), decided=3)
    assert vec.forced.tolist() == [True] * 12 + [False] * 3
    vec.reset(seed=0)
    zeros = torch.zeros(4, 15, dtype=torch.bool)
    _, _, _, _, info = vec.step(zeros)
    assert info["blocks_kept"].tolist() == [12] * 4
    assert torch.equal(vec.score(zeros), vec.env.score(vec.actions(zeros)))
    with pytest.raises(ValueError, match="values must be 0 or 1"):
        vec.step(torch.full((4, 15), 0.5))  # forcing does not hide bad input
    single = CurriculumWrapper(BlockDropEnv(split="test", **env_kwargs), decided=5)
    single.reset(seed=0)
    assert single.step(np.zeros(15))[4]["blocks_kept"] == 10
    with pytest.raises(ValueError, match="decided must lie"):
        single.decided = 16


def test_evaluation_figures_on_a_tiny_fixed_case(env_kwargs):
    # 16 images: a ragged last batch; fp32, so that the figures are those of predict() exactly
    env = BlockDropVectorEnv(num_envs=5, split="test", penalty=-1.0, precision="fp32", **env_kwargs)
    ev = evaluate(env, FirstK(4), policy_flops=1000.0)
    full = evaluate(env, FullPolicy())
    resnet = env.resnet
    images, labels = env.task.images, env.task.labels
    keep = torch.zeros(16, 15, dtype=torch.bool)
    keep[:, :4] = True
    correct = predict(resnet, images, keep) == labels
    assert ev.num_images == 16 and ev.keep.shape == (16, 15)
    assert ev.accuracy == pytest.approx(correct.float().mean().item())
    assert ev.reward_mean == pytest.approx(torch.where(correct, 1 - (4 / 15) ** 2, -1.0).mean().item(), rel=1e-6)
    assert (ev.blocks_mean, ev.blocks_std, ev.unique_policies) == (4.0, 0.0, 1)
    assert ev.flops_mean == pytest.approx(resnet.flops(keep[:1]).item() + 1000.0)
    assert full.accuracy == pytest.approx((predict(resnet, images) == labels).float().mean().item())
    rand = evaluate(env, RandomK(6, seed=1))
    assert rand.blocks_mean == 6.0 and rand.unique_policies > 10


@pytest.mark.slow
def test_agent_beats_random_policy_quickly(tmp_path):
    kwargs = synthetic_learnable(tmp_path)
    train_env = BlockDropVectorEnv(num_envs=128, split="train", augment=False, **kwargs)
    eval_env = BlockDropVectorEnv(num_envs=256, split="test", **kwargs)
    generator = torch.Generator().manual_seed(0)
    random_policy = evaluate(eval_env, lambda x: torch.rand(len(x), 15, generator=generator) < 0.5)
    full = evaluate(eval_env, FullPolicy())
    agent = BlockDropAgent(device="cpu")
    config = ReinforceConfig()
    optimizer = make_optimizer(agent, train_env, config)
    train_env.reset(seed=0)
    for _ in range(20):
        train_step(agent, train_env, optimizer, config, generator)
    trained = evaluate(eval_env, agent.greedy)
    assert trained.reward_mean > max(random_policy.reward_mean, full.reward_mean) + 0.3
    assert trained.blocks_mean < 14


def test_finetuning_trains_the_env_resnet(env_kwargs):
    env = BlockDropVectorEnv(num_envs=8, split="train", penalty=-5.0, **env_kwargs)
    agent = BlockDropAgent(device="cpu")
    config = ReinforceConfig(lr=1e-3, beta=0.0, finetune=True)
    before = {k: v.clone() for k, v in env.resnet.state_dict().items()}
    optimizer = make_optimizer(agent, env, config)
    env.reset(seed=0)
    stats = train_step(agent, env, optimizer, config, torch.Generator().manual_seed(0))
    assert stats["ce"] > 0
    changed = [k for k, v in env.resnet.state_dict().items() if not torch.equal(v, before[k])]
    assert any("residual" in k and "weight" in k for k in changed)
    assert not any("running" in k for k in changed)  # batch-norm statistics stay frozen
    make_optimizer(agent, env, ReinforceConfig())  # back to a frozen ResNet
    assert not any(p.requires_grad for p in env.resnet.parameters())


def test_load_agent_refuses_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_agent(tmp_path / "none.pt", device="cpu")
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"not a BlockDrop agent checkpoint \(no 'policy'\)"):
        load_agent(tmp_path / "other.pt", device="cpu")


def test_compiled_agent_acts_and_trains_like_the_eager_one(env_kwargs):
    torch.manual_seed(0)
    eager, compiled = BlockDropAgent(device="cpu"), BlockDropAgent(device="cpu", compile="default")
    compiled.policy.load_state_dict(eager.policy.state_dict())
    env = CurriculumVectorWrapper(BlockDropVectorEnv(num_envs=16, split="train", **env_kwargs), decided=15)
    images, _ = env.reset(seed=0)
    with torch.no_grad():
        probs_eager, probs_compiled = eager.forward(images)[0], compiled.forward(images)[0]
    assert torch.allclose(probs_compiled, probs_eager, atol=1e-5)
    config = ReinforceConfig()
    before = [p.detach().clone() for p in compiled.policy.parameters()]
    stats = train_step(compiled, env, make_optimizer(compiled, env, config), config, torch.Generator().manual_seed(0))
    assert torch.isfinite(stats["loss"]) and stats["reward"].shape == (16,)
    assert any(not torch.equal(b, p) for b, p in zip(before, compiled.policy.parameters(), strict=True))


@pytest.mark.parametrize("finetune_bn", ["frozen", "train"])
def test_finetuning_batch_norm_frozen_or_in_train_mode(env_kwargs, finetune_bn):
    env = BlockDropVectorEnv(num_envs=8, split="train", augment=False, penalty=-5.0, precision="fp32", **env_kwargs)
    trained_like(env.resnet, seed=2)
    images, labels = env.reset(seed=0)[0].clone(), env.privileged_labels().clone()
    agent = BlockDropAgent(device="cpu", precision="fp32")
    config = ReinforceConfig(lr=1e-3, beta=0.0, finetune=True, finetune_bn=finetune_bn)
    optimizer = make_optimizer(agent, env, config)
    resnet_before, policy_before = copy.deepcopy(env.resnet), copy.deepcopy(agent.policy)
    stats = train_step(agent, env, optimizer, config, torch.Generator().manual_seed(5))
    assert not env.resnet.training  # test walks and the env's own forwards use the running statistics
    running_before = resnet_before.blocks[0].residual[1].running_mean
    running_after = env.resnet.blocks[0].residual[1].running_mean
    assert torch.equal(running_before, running_after) == (finetune_bn == "frozen")
    # The step's rewards are those of the ResNet in the chosen mode (batch statistics for "train").
    resnet_before.train(finetune_bn == "train")
    with torch.no_grad():
        probs, _ = policy_before.train()(images)
        greedy = probs >= 0.5
        sampled = torch.bernoulli(bounded(probs, config.alpha), generator=torch.Generator().manual_seed(5)).bool()
        for keep, reward in ((sampled, stats["reward"]), (greedy, stats["reward_greedy"])):
            correct = resnet_before(images, keep).argmax(1) == labels
            assert torch.equal(blockdrop_reward(correct, keep.sum(1), 15, -5.0), reward)


def test_finetuning_on_kept_blocks_only_matches_the_masked_forward_under_frozen_batch_norm(env_kwargs):
    # Frozen batch norm: a dropped block's residual gets no gradient in the masked forward, so running
    # only the kept blocks must give the same rewards and the same gradients.
    results = {}
    for forward in ("masked", "kept"):
        env = BlockDropVectorEnv(num_envs=8, split="train", augment=False, penalty=-5.0, precision="fp32", **env_kwargs)
        trained_like(env.resnet, seed=2)
        before = [p.detach().clone() for p in env.resnet.parameters()]
        env.reset(seed=0)
        torch.manual_seed(3)  # the same policy for both
        agent = BlockDropAgent(device="cpu", precision="fp32")
        config = ReinforceConfig(lr=1e-3, beta=0.0, finetune=True, finetune_bn="frozen", finetune_forward=forward)
        stats = train_step(agent, env, make_optimizer(agent, env, config), config, torch.Generator().manual_seed(5))
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in env.resnet.parameters()]
        results[forward] = stats, before, [p.detach().clone() for p in env.resnet.parameters()], grads
    (masked, before, masked_weights, masked_grads), (kept, _, _, kept_grads) = results["masked"], results["kept"]
    assert masked["blocks_kept"].min() < 15  # some blocks dropped: the two forwards differ in work
    assert torch.equal(masked["reward"], kept["reward"]) and torch.equal(masked["greedy"], kept["greedy"])
    assert torch.allclose(masked["ce"], kept["ce"], atol=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before, masked_weights, strict=True))  # the ResNet trained
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(masked_grads, kept_grads, strict=True))


@pytest.mark.parametrize("batch_norm", ["frozen", "train"])
def test_finetuning_target_picks_the_actions_whose_cross_entropy_trains_the_resnet(env_kwargs, batch_norm):
    # Both actions are scored either way, so the policy gradient's rewards do not change; only the
    # masks under which the cross-entropy trains the ResNet do.
    results = {}
    for target in ("sampled", "greedy", "both"):
        env = BlockDropVectorEnv(num_envs=8, split="train", augment=False, penalty=-5.0, precision="fp32", **env_kwargs)
        trained_like(env.resnet, seed=2)
        env.reset(seed=0)
        images, labels, resnet = env.images.clone(), env.privileged_labels().clone(), copy.deepcopy(env.resnet)
        torch.manual_seed(3)  # the same policy for all
        agent = BlockDropAgent(device="cpu", precision="fp32")
        config = ReinforceConfig(lr=1e-3, beta=0.0, finetune=True, finetune_bn=batch_norm, finetune_target=target)
        stats = train_step(agent, env, make_optimizer(agent, env, config), config, torch.Generator().manual_seed(5))
        results[target] = stats
    sampled, greedy, both = results["sampled"], results["greedy"], results["both"]
    for other in (greedy, both):
        assert torch.equal(sampled["reward"], other["reward"]) and torch.equal(sampled["greedy"], other["greedy"])
        assert torch.equal(sampled["reward_greedy"], other["reward_greedy"])
    with torch.no_grad():
        under_greedy = torch.nn.functional.cross_entropy(
            resnet.train(batch_norm == "train")(images, greedy["greedy"]), labels
        )
    assert torch.allclose(greedy["ce"], under_greedy, atol=1e-5)
    assert not torch.allclose(sampled["ce"], under_greedy, atol=1e-5)  # exploration flipped some blocks
    assert torch.allclose(both["ce"], (sampled["ce"] + greedy["ce"]) / 2, atol=1e-5)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("finetune_target", "greed", "finetune_target must be one of 'sampled', 'greedy', 'both'; got 'greed'"),
        ("finetune_bn", "eval", "finetune_bn must be one of 'frozen', 'train'; got 'eval'"),
        ("finetune_forward", "gather", "finetune_forward must be one of 'masked', 'kept'; got 'gather'"),
        ("entropy", "shannon", "entropy must be one of 'bernoulli', 'authors'; got 'shannon'"),
        ("alpha", 0.5, r"alpha must lie in \(0.5, 1\]; got 0.5"),
        ("alpha", float("nan"), r"alpha must lie in \(0.5, 1\]; got nan"),
        ("lr", -1e-3, "lr must be >= 0; got -0.001"),
        ("beta", float("nan"), "beta must be >= 0; got nan"),
    ],
)
def test_a_config_with_an_unknown_choice_or_a_bad_number_is_refused(field, value, message):
    # Refused when built: a misspelt choice would otherwise act as another one in train_step.
    with pytest.raises(ValueError, match=message):
        ReinforceConfig(finetune=True, **{field: value})


@pytest.mark.parametrize("gather_below", [0.0, 2.0])
def test_kept_blocks_forward_takes_batch_statistics_from_the_images_that_keep_a_block(gather_below):
    torch.manual_seed(0)
    resnet = CifarResNet(20).train()
    reference = copy.deepcopy(resnet)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    keep = torch.ones(8, 9, dtype=torch.bool)
    keep[4:, 0] = False  # block 0 kept by the first four images only
    resnet(images, keep, gather_below=gather_below)
    users = slice(0, 4) if gather_below else slice(None)  # the masked forward runs every image through it
    with torch.no_grad():
        reference.blocks[0].residual(reference.stem(reference.normalize(images))[users])
    bn, expected = resnet.blocks[0].residual[1], reference.blocks[0].residual[1]
    assert torch.allclose(bn.running_mean, expected.running_mean, atol=1e-6)
    assert torch.allclose(bn.running_var, expected.running_var, atol=1e-5)


def test_a_policy_on_downsampled_images_costs_a_quarter_and_is_saved_with_its_size(tmp_path):
    full, small = PolicyNet(15), PolicyNet(15, input_size=16)
    trunk = full.flops() - 2 * 64 * 15
    assert small.flops() == pytest.approx(trunk / 4 + 2 * 64 * 15)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    small.load_state_dict(full.state_dict())  # same weights, other input: other decisions
    assert small(images)[0].shape == (3, 15) and not torch.allclose(small(images)[0], full(images)[0])
    pooled = torch.nn.functional.avg_pool2d(images.float() / 255, 2)
    assert torch.allclose(small(images)[0], small.keep_head(small.trunk(pooled)).sigmoid(), atol=1e-6)
    agent = BlockDropAgent(device="cpu", policy_input=16)
    save_agent(tmp_path / "a.pt", agent)
    assert load_agent(tmp_path / "a.pt", device="cpu").policy.input_size == 16
    with pytest.raises(ValueError, match="input_size must be"):
        PolicyNet(15, input_size=20)


def test_drop_landscape_drops_each_block_once(env_kwargs, tmp_path):
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    assert DropOne(3)(images).sum(1).tolist() == [14, 14] and not DropOne(3)(images)[:, 3].any()
    assert [name for name, _ in drop_landscape(4)] == [f"drop block {k}" for k in range(4)]
    with pytest.raises(ValueError, match="k must lie"):
        DropOne(15)
    common = dict(device="cpu", data_dir=str(env_kwargs["data_dir"]), checkpoint=env_kwargs["checkpoint"])
    rows = evaluate_script.main(evaluate_script.Args(baselines="full", landscape=True, out=tmp_path, **common))
    assert [r["name"] for r in rows] == ["full ResNet"] + [f"drop block {k}" for k in range(15)]
    assert all(r["blocks_mean"] == 14 for r in rows[1:])
    assert (tmp_path / "drop_landscape.png").stat().st_size > 1000


def test_random_k_makes_its_generator_on_the_images_device_unless_given_one():
    images = torch.zeros(8, 3, 32, 32, dtype=torch.uint8)
    lazy, given = RandomK(6, seed=1), RandomK(6, seed=1, device="cpu")
    assert lazy.generator is None and torch.equal(lazy(images), given(images))
    assert lazy.generator.device.type == "cpu" and not torch.equal(lazy(images), RandomK(6, seed=2)(images))
