import numpy as np
import pytest
import torch
from stable_baselines3.common.env_checker import check_env

from agents.baselines import FullPolicy
from agents.evaluation import evaluate
from agents.sb3 import ALGORITHMS, ResNet8Extractor, greedy_policy, make_algorithm
from blockdrop_env import BlockDropEnv, BlockDropVectorEnv
from blockdrop_env.sb3 import SB3VecEnv, to_host
from blockdrop_env.wrappers import CurriculumVectorWrapper

from .conftest import synthetic_learnable


def test_sb3_check_env_passes_on_the_single_env(env_kwargs):
    with pytest.warns(UserWarning, match="36x36"):  # about SB3's default CNN, which we replace
        check_env(BlockDropEnv(split="train", **env_kwargs))


def test_to_host_round_trips_mixed_dtypes():
    tensors = [
        torch.arange(6, dtype=torch.uint8).view(2, 3),
        torch.tensor([1.5, -2.0]),
        torch.tensor([True, False]),
        torch.tensor([7, 9], dtype=torch.int64),
    ]
    for t, h in zip(tensors, to_host(*tensors), strict=True):
        assert h.dtype == t.numpy().dtype and np.array_equal(h, t.numpy())


def test_adapter_contract(env_kwargs):
    env = SB3VecEnv(BlockDropVectorEnv(num_envs=4, split="test", **env_kwargs))
    env.seed(5)
    obs = env.reset()
    assert isinstance(obs, np.ndarray) and obs.shape == (4, 3, 32, 32) and obs.dtype == np.uint8
    obs2, rewards, dones, infos = env.step(np.ones((4, 15), dtype=np.float32))
    assert obs2.shape == (4, 3, 32, 32) and obs2.dtype == np.uint8
    assert rewards.shape == (4,) and rewards.dtype == np.float32
    assert dones.dtype == bool and dones.all() and len(infos) == 4
    for i in range(4):
        assert np.array_equal(infos[i]["terminal_observation"], obs[i])
        assert infos[i]["blocks_kept"] == 15 and rewards[i] == (0.0 if infos[i]["correct"] else -1.0)
    env.seed(5)
    assert np.array_equal(env.reset(), obs)  # seeding goes through to the env
    with pytest.raises(ValueError, match="values must be 0 or 1"):
        env.step(np.full((4, 15), 0.5))
    assert env.get_attr("num_blocks") == [15] * 4
    wrapped = SB3VecEnv(CurriculumVectorWrapper(BlockDropVectorEnv(num_envs=4, split="test", **env_kwargs), 2))
    assert wrapped.env_is_wrapped(CurriculumVectorWrapper) == [True] * 4
    wrapped.reset()
    _, _, _, infos = wrapped.step(np.zeros((4, 15)))
    assert [i["blocks_kept"] for i in infos] == [13] * 4


def test_extractor_takes_uint8_cifar_images():
    import gymnasium as gym

    extractor = ResNet8Extractor(gym.spaces.Box(0, 255, (3, 32, 32), np.uint8))
    assert extractor.features_dim == 64
    assert extractor(torch.rand(2, 3, 32, 32)).shape == (2, 64)


def test_unknown_algorithm_is_refused(env_kwargs):
    env = SB3VecEnv(BlockDropVectorEnv(num_envs=4, split="test", **env_kwargs))
    with pytest.raises(ValueError, match="algorithm must be one of"):
        make_algorithm("dqn", env)
    assert set(ALGORITHMS) == {"ppo", "a2c", "trpo"}


@pytest.mark.slow
# A2C's one-step updates of 64 raw advantages collapse to an always-wrong block set on 2 of 4 seeds
# at this budget; normalized, all 4 learn (its learning is what the test is for, not the variance
# of unnormalized A2C at 2,048 steps).
@pytest.mark.parametrize("algo, steps, overrides", [("ppo", 2048, {}), ("a2c", 2048, {"normalize_advantage": True})])
def test_sb3_algorithms_beat_a_random_policy(tmp_path, algo, steps, overrides):
    kwargs = synthetic_learnable(tmp_path)
    env = SB3VecEnv(BlockDropVectorEnv(num_envs=64, split="train", augment=False, **kwargs))
    eval_env = BlockDropVectorEnv(num_envs=256, split="test", **kwargs)
    generator = torch.Generator().manual_seed(0)
    random_policy = evaluate(eval_env, lambda x: torch.rand(len(x), 15, generator=generator) < 0.5)
    model = make_algorithm(algo, env, seed=0, device="cpu", learning_rate=1e-3, **overrides)
    model.learn(steps)
    trained = evaluate(eval_env, greedy_policy(model))
    assert trained.reward_mean > random_policy.reward_mean + 0.3
    assert evaluate(eval_env, FullPolicy()).reward_mean == 0.0  # labels are the full ResNet's answers


def test_trpo_runs_through_the_adapter(env_kwargs):
    env = SB3VecEnv(BlockDropVectorEnv(num_envs=8, split="train", **env_kwargs))
    model = make_algorithm("trpo", env, seed=0, device="cpu", batch_size=32)
    model.learn(32)
    assert model.num_timesteps == 32
    assert greedy_policy(model)(torch.zeros(3, 3, 32, 32, dtype=torch.uint8)).shape == (3, 15)


def test_make_algorithm_takes_the_env_id(env_kwargs):
    kwargs = {k: v for k, v in env_kwargs.items() if k != "device"}
    model = make_algorithm("a2c", "BlockDrop-CIFAR10-R32", device="cpu", num_envs=4, env_kwargs=kwargs)
    assert isinstance(model.get_env(), SB3VecEnv) and model.get_env().num_envs == 4
    assert isinstance(model.get_env().base, BlockDropVectorEnv)
    model.learn(8)
    assert model.num_timesteps == 8
    with pytest.raises(ValueError, match="made already"):
        make_algorithm("a2c", model.get_env(), device="cpu", env_kwargs=kwargs)
