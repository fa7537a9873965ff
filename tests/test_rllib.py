"""The env as RLlib takes it (MultiDiscrete keep mask, float HWC images), and an RLlib PPO smoke run
where RLlib is installed (CI runs it in its own environment: RLlib pins its own Gymnasium)."""

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from blockdrop_env import BlockDropEnv
from blockdrop_env.rllib import CONV_FILTERS, MultiDiscreteKeep, make_rllib_env


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")  # the wrappers are the point
def test_rllib_view_is_the_same_env_with_other_spaces(env_kwargs):
    env = make_rllib_env(split="test", **env_kwargs)
    check_env(env, skip_render_check=True)
    assert env.action_space.nvec.tolist() == [2] * 15 and env.observation_space.shape == (32, 32, 3)
    plain = BlockDropEnv(split="test", **env_kwargs)
    obs, _ = env.reset(seed=4)
    image, _ = plain.reset(seed=4)
    assert obs.dtype == np.float32 and np.array_equal(obs, np.moveaxis(image, 0, -1).astype(np.float32))
    keep = np.array([1, 0] * 7 + [1])
    _, reward, terminated, _, info = env.step(keep)
    _, plain_reward, _, _, plain_info = plain.step(keep.astype(np.int8))
    assert terminated and reward == plain_reward and info["blocks_kept"] == plain_info["blocks_kept"] == 8


def test_multidiscrete_keep_refuses_other_action_spaces(env_kwargs):
    import gymnasium as gym

    with pytest.raises(TypeError, match="MultiBinary"):
        MultiDiscreteKeep(gym.make("CartPole-v1"))


def test_rllib_ppo_trains_on_the_env(env_kwargs, tmp_path):
    pytest.importorskip("ray.rllib", reason="RLlib not installed (CI runs this in its own environment)")
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.tune.registry import register_env

    register_env("blockdrop-test", lambda config: make_rllib_env(**config))
    ray.init(num_cpus=1, include_dashboard=False, ignore_reinit_error=True)
    try:
        config = (
            PPOConfig()
            .environment("blockdrop-test", env_config={"split": "train", **env_kwargs})
            .env_runners(num_env_runners=0)
            .training(train_batch_size_per_learner=64, minibatch_size=32, num_epochs=1)
            .rl_module(model_config={"conv_filters": CONV_FILTERS})
        )
        algo = config.build_algo()
        result = algo.train()
        assert result["num_env_steps_sampled_lifetime"] >= 64
        assert np.isfinite(result["env_runners"]["episode_return_mean"])
        algo.stop()
    finally:
        ray.shutdown()
