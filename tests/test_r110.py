"""BlockDrop-CIFAR10-R110: the paper's flagship env, 54 blocks, registered beside the ResNet-32 one."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import blockdrop_env  # noqa: F401 - registers the ids
from agents.reinforce import load_agent
from blockdrop_env import BlockDropEnv, BlockDropVectorEnv
from blockdrop_env.checkpoint import load_resnet, save_resnet
from blockdrop_env.data import load_cifar
from blockdrop_env.resnet import CifarResNet, predict

from .conftest import requires_real_data, trained_like


@pytest.fixture(scope="module")
def r110_kwargs(synthetic_dir, tmp_path_factory) -> dict:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("r110") / "r110.pt"
    save_resnet(path, trained_like(CifarResNet(110), seed=0))
    return {"data_dir": synthetic_dir, "checkpoint": path, "device": "cpu", "depth": 110}


def test_r110_ids_make_54_block_envs(r110_kwargs):
    env = gym.make("BlockDrop-CIFAR10-R110", split="test", **r110_kwargs)
    assert env.action_space == gym.spaces.MultiBinary(54)
    assert env.observation_space == gym.spaces.Box(0, 255, (3, 32, 32), np.uint8)
    vec = gym.make_vec("BlockDrop-CIFAR10-R110", num_envs=3, split="test", **r110_kwargs)
    assert isinstance(vec, BlockDropVectorEnv) and vec.single_action_space == gym.spaces.MultiBinary(54)
    env.reset(seed=0)
    _, reward, *_, info = env.step(np.ones(54, dtype=np.int8))
    assert info["blocks_kept"] == 54 and reward == (0.0 if info["correct"] else -1.0)  # 1 - (54/54)^2 when right


def test_r110_reward_counts_blocks_over_54(r110_kwargs):
    env = BlockDropVectorEnv(num_envs=16, split="test", precision="fp32", **r110_kwargs)
    env.reset(options={"index": torch.arange(16)})
    keep = torch.zeros(16, 54, dtype=torch.bool)
    keep[:, :27] = True
    out = env.evaluate(keep)
    expected = torch.where(out.correct, torch.tensor(1 - (27 / 54) ** 2), torch.tensor(-1.0))
    assert torch.allclose(out.reward, expected)


def test_r110_flops_match_torch_flop_counter():
    model = CifarResNet(110).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    assert model.num_blocks == 54 and model.flops().item() == counter.get_total_flops()


def test_r110_vector_env_agrees_with_the_single_env(r110_kwargs):
    single = BlockDropEnv(split="test", precision="fp32", **r110_kwargs)
    vec = BlockDropVectorEnv(num_envs=4, split="test", precision="fp32", **r110_kwargs)
    keep = torch.rand(4, 54, generator=torch.Generator().manual_seed(1)) < 0.5
    vec.reset(options={"index": torch.arange(4)})
    rewards = vec.evaluate(keep).reward
    for i in range(4):
        single.reset(options={"index": i})
        assert single.score(keep[i].numpy()) == pytest.approx(rewards[i].item())


def test_r110_works_out_of_the_box_with_the_shipped_resnet110(synthetic_dir):
    env = gym.make("BlockDrop-CIFAR10-R110", split="test", data_dir=synthetic_dir, device="cpu")
    task = env.unwrapped.task
    assert task.resnet.num_blocks == 54 and task.checkpoint_meta["test_accuracy"] >= 0.93
    env.reset(seed=0)
    _, _, *_, info = env.step(np.ones(54, dtype=np.int8))
    assert info["blocks_kept"] == 54


@pytest.mark.slow
@requires_real_data
def test_shipped_resnet110_scores_at_least_93_percent_on_real_test_images():
    model, meta = load_resnet(depth=110)
    images, labels = load_cifar("test")
    # The first 2,000 test images (the whole split takes minutes in fp32 on a small CPU).
    accuracy = (predict(model, images[:2000]) == labels[:2000]).float().mean().item()
    assert meta["test_accuracy"] >= 0.93
    assert accuracy >= 0.93, accuracy


def test_an_unshipped_depth_says_how_to_get_one(synthetic_dir):
    with pytest.raises(FileNotFoundError, match="no pretrained ResNet-50 .* ships with the package yet"):
        gym.make("BlockDrop-CIFAR10-R110", depth=50, data_dir=synthetic_dir, device="cpu")


def test_agent_trains_and_evaluates_on_the_r110_env(r110_kwargs, tmp_path):
    from experiments import evaluate, train_blockdrop

    common = dict(device="cpu", data_dir=str(r110_kwargs["data_dir"]), depth=110)
    train_blockdrop.main(
        train_blockdrop.Args(
            stage="curriculum", curriculum_epochs=1, batch_size=16, out=tmp_path / "run",
            resnet_checkpoint=r110_kwargs["checkpoint"], limit=32, **common,
        )
    )  # fmt: skip
    assert load_agent(tmp_path / "run" / "agent.pt", device="cpu").policy.num_blocks == 54
    rows = evaluate.main(
        evaluate.Args(
            policy=str(tmp_path / "run" / "agent.pt"), checkpoint=r110_kwargs["checkpoint"], budgets=(12, 40),
            batch_size=4, limit=12, out=tmp_path / "eval", plots=False, **common,
        )
    )  # fmt: skip
    names = [r["name"] for r in rows]
    assert names[1:] == ["full ResNet", "FirstK k=12", "FirstK k=40", "RandomK k=12", "RandomK k=40"]
    assert rows[3]["blocks_mean"] == 40 and all(r["num_images"] == 12 for r in rows)


def test_a_policy_for_another_depth_is_refused(r110_kwargs, tmp_path):
    from experiments import evaluate
    from experiments.cli import UsageError

    with pytest.raises(UsageError, match="decides 15 blocks; the ResNet-110 has 54"):
        evaluate.main(
            evaluate.Args(
                policy="r32-finetune-p1-cpu", depth=110, checkpoint=r110_kwargs["checkpoint"], device="cpu",
                data_dir=str(r110_kwargs["data_dir"]), out=tmp_path / "eval",
            )
        )  # fmt: skip


def test_published_points_beside_the_r110_are_its_own():
    from agents.policy import PolicyNet
    from blockdrop_env.resnet import CifarResNet
    from experiments.published import published_rows

    r110 = {r["name"]: r for r in published_rows(110)}
    paper = r110["BlockDrop paper: ResNet-110 finetuned at -10"]
    net = CifarResNet(110)
    by_hand = net.fixed_flops + 16.93 * float(net.block_flops.sum()) / 54 + PolicyNet(54).flops()
    assert paper["flops_mean"] == pytest.approx(by_hand) and paper["accuracy"] == 0.936
    assert r110["He et al. 2016: ResNet-110"]["flops_mean"] == float(net.flops())
    assert not any("ResNet-32 curriculum" in name for name in r110)
    r32 = {r["name"] for r in published_rows(32)}
    assert "He et al. 2016: ResNet-44" in r32 and "He et al. 2016: ResNet-56" not in r32
    assert not any("ResNet-110" in name for name in r32)
    with pytest.raises(ValueError, match="ResNet-56"):
        published_rows(56)
