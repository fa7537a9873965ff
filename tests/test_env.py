import pickle
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import blockdrop_env
from blockdrop_env import BlockDropEnv, BlockDropVectorEnv
from blockdrop_env.reward import blockdrop_reward

from .conftest import PER_BATCH


@pytest.fixture
def env(env_kwargs):
    return BlockDropEnv(split="test", **env_kwargs)


@pytest.fixture
def venv(env_kwargs):
    return BlockDropVectorEnv(num_envs=4, split="test", **env_kwargs)


def test_gymnasium_check_env_passes(env_kwargs):
    check_env(gym.make("BlockDrop-CIFAR10-R32", split="train", render_mode="rgb_array", **env_kwargs).unwrapped)


def test_spaces(env):
    assert env.observation_space == gym.spaces.Box(0, 255, (3, 32, 32), np.uint8)
    assert env.action_space == gym.spaces.MultiBinary(15)


def test_step_returns_one_step_episode_with_info(env):
    obs, info = env.reset(seed=1)
    assert obs.shape == (3, 32, 32) and obs.dtype == np.uint8 and set(info) == {"index"}
    _, reward, terminated, truncated, info = env.step(np.ones(15, dtype=np.int8))
    assert terminated is True and truncated is False
    assert {"label", "prediction", "correct", "blocks_kept", "flops", "index"} <= set(info)
    assert info["blocks_kept"] == 15 and info["flops"] == pytest.approx(1.377e8, rel=1e-3)
    assert reward == (0.0 if info["correct"] else -1.0)
    assert info["correct"] == (info["label"] == info["prediction"])


@pytest.mark.parametrize(
    "correct, kept, penalty, expected",
    [
        (True, 15, -1.0, 0.0),
        (True, 0, -1.0, 1.0),
        (True, 5, -5.0, 1 - (5 / 15) ** 2),
        (False, 3, -1.0, -1.0),
        (False, 15, -10.0, -10.0),
    ],
)
def test_reward_formula(correct, kept, penalty, expected):
    reward = blockdrop_reward(torch.tensor([correct]), torch.tensor([kept]), 15, penalty)
    assert reward.dtype == torch.float32 and reward.item() == pytest.approx(expected)


def test_env_reward_follows_formula_for_its_prediction(env_kwargs):
    env = BlockDropEnv(split="test", penalty=-7.0, **env_kwargs)
    for index in range(8):
        env.reset(options={"index": index})
        keep = np.zeros(15, dtype=bool)
        keep[: index + 3] = True
        _, reward, _, _, info = env.step(keep)
        expected = 1 - ((index + 3) / 15) ** 2 if info["correct"] else -7.0
        assert reward == pytest.approx(expected) and info["blocks_kept"] == index + 3


def test_strided_numpy_actions_are_accepted(env):
    env.reset(seed=0)
    keep = np.r_[np.ones(10), np.zeros(20)][::-2]  # a reversed, strided view of 15 values
    assert env.step(keep)[4]["blocks_kept"] == int(keep.sum())


def test_score_does_not_advance(env):
    obs, info = env.reset(seed=3)
    keep = np.r_[np.ones(7), np.zeros(8)]
    first = env.score(keep)
    every = torch.ones(1, 15, dtype=torch.bool)
    right = env.task.predict(torch.from_numpy(obs)[None], every).item() == env.task.labels[info["index"]].item()
    assert env.score(keep) == first and env.score(np.ones(15)) == (0.0 if right else -1.0)
    obs_after, reward, *_ = env.step(keep)
    assert np.array_equal(obs, obs_after) and reward == first


def test_seeded_reset_is_deterministic_with_augmentation(env_kwargs):
    a = BlockDropEnv(split="train", augment=True, **env_kwargs)
    b = BlockDropEnv(split="train", augment=True, **env_kwargs)
    runs = []
    for e in (a, b):
        e.reset(seed=123)
        runs.append([e.reset()[0] for _ in range(5)])
    assert all(np.array_equal(x, y) for x, y in zip(*runs, strict=True))
    a.reset(seed=124)
    assert not all(np.array_equal(x, a.reset()[0]) for x in runs[0])


def test_augmentation_changes_train_images_only_when_on(env_kwargs):
    plain = BlockDropEnv(split="train", augment=False, **env_kwargs)
    augmented = BlockDropEnv(split="train", **env_kwargs)  # default: on for train
    assert augmented.task.augment and not BlockDropEnv(split="test", **env_kwargs).task.augment
    changed = 0
    for i in range(10):
        raw = plain.reset(options={"index": i})[0]
        assert np.array_equal(raw, plain.task.images[i].numpy())
        changed += not np.array_equal(raw, augmented.reset(options={"index": i})[0])
    assert changed >= 5


def test_vector_env_equals_single_env(env_kwargs):
    single = BlockDropEnv(split="test", penalty=-2.0, **env_kwargs)
    vector = BlockDropVectorEnv(num_envs=PER_BATCH, split="test", penalty=-2.0, **env_kwargs)
    keep = torch.randint(0, 2, (PER_BATCH, 15), generator=torch.Generator().manual_seed(0)).bool()
    obs, _ = vector.reset(options={"index": np.arange(PER_BATCH)})
    scores = vector.score(keep)
    _, rewards, terminated, truncated, info = vector.step(keep)
    assert torch.equal(scores, rewards) and terminated.all() and not truncated.any()
    assert torch.equal(info["final_obs"], obs)
    for i in range(PER_BATCH):
        single_obs, _ = single.reset(options={"index": i})
        assert np.array_equal(single_obs, obs[i].numpy())
        _, reward, _, _, single_info = single.step(keep[i].numpy())
        assert reward == rewards[i].item()
        for key in ("label", "prediction", "correct", "blocks_kept", "flops"):
            assert single_info[key] == info[key][i].item(), key


def test_writing_into_an_observation_leaves_the_images_the_env_scores_alone(env_kwargs):
    written, untouched = (BlockDropVectorEnv(num_envs=4, split="test", **env_kwargs) for _ in range(2))
    keep = torch.ones(4, 15, dtype=torch.bool)
    obs, _ = written.reset(seed=0)
    untouched.reset(seed=0)
    for _ in range(2):  # the observation of reset, then of step
        obs.zero_()
        assert torch.equal(written.images, untouched.images) and written.images.any()
        obs, rewards, *_ = written.step(keep)
        assert torch.equal(rewards, untouched.step(keep)[1])


def test_vector_env_autoresets_in_the_same_step(venv):
    obs, _ = venv.reset(seed=0)
    next_obs, rewards, terminated, _, info = venv.step(torch.ones(4, 15, dtype=torch.bool))
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    assert torch.equal(info["final_obs"], obs) and torch.equal(next_obs, venv.images)
    assert rewards.shape == (4,) and rewards.dtype == torch.float32 and terminated.all()
    assert venv.observation_space.shape == (4, 3, 32, 32)


def test_vector_env_seeding_is_deterministic(env_kwargs):
    a = BlockDropVectorEnv(num_envs=4, split="train", **env_kwargs)
    b = BlockDropVectorEnv(num_envs=4, split="train", **env_kwargs)
    keep = torch.ones(4, 15, dtype=torch.bool)
    for v in (a, b):
        v.reset(seed=7)
    assert torch.equal(a.step(keep)[0], b.step(keep)[0])
    other = BlockDropVectorEnv(num_envs=4, split="train", **env_kwargs)
    other.reset(seed=8)
    assert not torch.equal(other.step(keep)[0], b.step(keep)[0])  # another seed, other images


def test_registration_and_make_vec_native(env_kwargs):
    env = gym.make("BlockDrop-CIFAR10-R32", split="test", **env_kwargs)
    assert isinstance(env.unwrapped, BlockDropEnv)
    vec = gym.make_vec("BlockDrop-CIFAR10-R32", num_envs=3, split="test", **env_kwargs)
    assert isinstance(vec, BlockDropVectorEnv) and vec.num_envs == 3


def test_make_with_module_prefix_without_import(synthetic_dir, random_checkpoint):
    code = (
        "import gymnasium as gym, sys\n"
        "assert 'blockdrop_env' not in sys.modules\n"
        f"env = gym.make('blockdrop_env:BlockDrop-CIFAR10-R32', data_dir={str(synthetic_dir)!r},"
        f" checkpoint={str(random_checkpoint)!r}, device='cpu')\n"
        "print(type(env.unwrapped).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "BlockDropEnv"


BAD_ACTIONS = {
    "short": (np.ones(14), r"shape \(15,\)"),
    "matrix": (np.ones((1, 15)), r"shape \(15,\)"),
    "two": (np.full(15, 2), "values must be 0 or 1"),
    "minus one": (np.full(15, -1), "values must be 0 or 1"),
    "nan": (np.full(15, np.nan), "values must be 0 or 1"),
    "half": (np.full(15, 0.5), "values must be 0 or 1"),
    "strings": (np.array(["1"] * 15), "dtype"),
    "complex": (np.ones(15, dtype=complex), "dtype"),
}


@pytest.mark.parametrize("name", BAD_ACTIONS)
def test_bad_actions_are_refused(env, name):
    action, match = BAD_ACTIONS[name]
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)
    with pytest.raises(ValueError, match=match):
        env.score(action)


@pytest.mark.parametrize("name", ["two", "nan", "half"])
def test_bad_vector_actions_are_refused(venv, name):
    value = {"two": 2.0, "nan": float("nan"), "half": 0.5}[name]
    venv.reset(seed=0)
    action = torch.ones(4, 15)
    action[2, 3] = value
    with pytest.raises(ValueError, match="values must be 0 or 1"):
        venv.step(action)


def test_vector_batch_of_wrong_size_is_refused(venv):
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(4, 15\)"):
        venv.step(torch.ones(3, 15, dtype=torch.bool))


def test_step_before_reset_is_refused(env, venv):
    with pytest.raises(ValueError, match="reset"):
        env.step(np.ones(15))
    with pytest.raises(ValueError, match="reset"):
        venv.step(torch.ones(4, 15, dtype=torch.bool))
    env.reset(seed=0)
    env.step(np.ones(15))
    with pytest.raises(ValueError, match="episode is over"):
        env.step(np.ones(15))
    with pytest.raises(gym.error.ResetNeeded):  # also Gymnasium's own error type
        env.score(np.ones(15))


@pytest.mark.parametrize("index", [-1, PER_BATCH, 2.0, [0, 1]])
def test_bad_reset_index_is_refused(env, index):
    with pytest.raises(ValueError, match="options\\['index'\\]"):
        env.reset(options={"index": index})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"split": "valid"}, "split must be one of"),
        ({"augment": "False"}, "augment must be None, True or False"),
        ({"penalty": float("nan")}, "penalty must be"),
        ({"device": "tpu"}, "device must be"),
        ({"dataset": "mnist"}, "dataset must be one of"),
    ],
)
def test_bad_constructor_arguments(env_kwargs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        BlockDropEnv(**{**env_kwargs, **kwargs})


def test_bad_num_envs(env_kwargs):
    with pytest.raises(ValueError, match="num_envs"):
        BlockDropVectorEnv(num_envs=0, **env_kwargs)


def test_render_returns_the_image(env_kwargs):
    env = BlockDropEnv(split="test", render_mode="rgb_array", **env_kwargs)
    obs, _ = env.reset(seed=0)
    assert np.array_equal(env.render(), obs.transpose(1, 2, 0))


def test_package_exports():
    assert blockdrop_env.BlockDropEnv is BlockDropEnv


ASYNC_SCRIPT = """
import sys, numpy as np, gymnasium as gym, torch
import blockdrop_env
torch.ones(512, 512) @ torch.ones(512, 512)  # the parent's thread pool is up before the fork
kwargs = dict(data_dir=sys.argv[1], checkpoint=sys.argv[2], device="cpu", limit=64)
venv = gym.make_vec("BlockDrop-CIFAR10-R32", num_envs=2, vectorization_mode="async", **kwargs)
obs, info = venv.reset(seed=0)
for _ in range(3):
    obs, reward, terminated, truncated, info = venv.step(np.ones((2, 15), dtype=np.int8))
assert obs.shape == (2, 3, 32, 32) and terminated.all() and reward.shape == (2,)
venv.close()
print("stepped")
"""


def test_gymnasiums_async_vector_env_steps_with_forked_workers(env_kwargs):
    """Forked workers used to hang in torch's thread pool (the default start method on Linux)."""
    result = subprocess.run(
        [sys.executable, "-c", ASYNC_SCRIPT, str(env_kwargs["data_dir"]), str(env_kwargs["checkpoint"])],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0 and result.stdout.strip() == "stepped", result.stderr[-2000:]


def test_info_keys_leave_the_reward_alone_and_the_autoreset_mode_is_an_attribute(env_kwargs):
    env = BlockDropVectorEnv(num_envs=4, **env_kwargs)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.ones((4, 15), dtype=np.int8))
    assert not {"reward", "done", "terminated", "truncated", "observation", "action"} & set(info)
    assert env.autoreset_mode == env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    single = BlockDropEnv(**env_kwargs)
    single.reset(seed=0)
    assert "reward" not in single.step(np.ones(15, dtype=np.int8))[4]


def test_pickling_an_env_on_part_of_a_split_copies_only_that_part(env_kwargs):
    env = BlockDropEnv(limit=8, **env_kwargs)
    assert env.task.images.untyped_storage().nbytes() == 8 * 3 * 32 * 32
    assert len(pickle.dumps(env)) < 2_000_000


def test_a_misspelt_reset_option_is_refused(env_kwargs):
    for env in (BlockDropEnv(**env_kwargs), BlockDropVectorEnv(num_envs=2, **env_kwargs)):
        with pytest.raises(ValueError, match=r"unknown reset option\(s\) \['idx'\]"):
            env.reset(options={"idx": 3})


def test_stock_vector_wrappers_stack_on_the_native_vector_env(env_kwargs):
    """``step(actions)`` is Gymnasium's own; the two-action scoring has its own name."""
    from blockdrop_env.wrappers import CurriculumVectorWrapper

    native = CurriculumVectorWrapper(BlockDropVectorEnv(4, **env_kwargs), 1)
    venv = gym.wrappers.vector.TransformReward(native, lambda reward: 2 * reward)
    venv.reset(seed=0)
    _, reward, terminated, _, info = venv.step(torch.zeros(4, 15, dtype=torch.bool))
    assert terminated.all() and torch.equal(info["blocks_kept"], torch.full((4,), 14))
    assert torch.equal(reward, 2 * torch.where(info["correct"], 1 - (14 / 15) ** 2, -1.0).float())
    _, _, _, _, info = venv.unwrapped.step_with_baseline(torch.ones(4, 15), torch.ones(4, 15))
    assert torch.equal(info["baseline_reward"], torch.where(info["correct"], 0.0, -1.0))
