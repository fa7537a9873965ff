"""The recipes of docs/INTEGRATIONS.md run as written, each in a fresh process (some libraries
start worker processes) on the real data: TorchRL, Tianshou, skrl, RL Baselines3 Zoo and
Gymnasium's numpy vector wrappers. RLlib's recipe: tests/test_rllib.py, in its own environment."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import requires_real_data

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "INTEGRATIONS.md").read_text()

pytestmark = [requires_real_data, pytest.mark.slow]


def recipe(section: str, language: str = "python") -> str:
    """The first code block of ``language`` in a section of docs/INTEGRATIONS.md."""
    found = re.search(rf"## {re.escape(section)}\n\n(?:.*?\n)*?```{language}\n(.*?)```", DOC, re.S)
    assert found, f"no {language} block under '## {section}'"
    return found.group(1)


def run_recipe(code: str, tmp_path: Path, timeout: int = 600) -> str:
    script = tmp_path / "recipe.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_gymnasiums_numpy_wrappers_over_the_native_vector_env(tmp_path):
    pytest.importorskip("array_api_compat")
    out = run_recipe(recipe("Gymnasium's vector envs"), tmp_path)
    numpy_obs, reward_dtype, all_done = out.strip().splitlines()[-1].rsplit(" ", 2)
    assert numpy_obs == "<class 'numpy.ndarray'>" and reward_dtype.startswith("float") and all_done == "True"


def test_torchrl_checks_the_specs_of_the_env_its_async_vector_env_and_the_native_one(tmp_path):
    pytest.importorskip("torchrl")
    out = run_recipe(recipe("TorchRL"), tmp_path)
    assert out.strip().splitlines()[-1] == "torch.Size([256, 1, 1]) tensor(True)"


def test_tianshou_subprocess_envs_step_real_images(tmp_path):
    pytest.importorskip("tianshou")
    shape, mean_reward = run_recipe(recipe("Tianshou"), tmp_path).strip().splitlines()[-1].split(") ")
    assert shape == "(4, 3, 32, 32"
    assert -1 <= float(mean_reward) <= 0  # every block kept: reward 0 when right, the penalty when wrong


def test_skrl_ppo_trains_through_the_multidiscrete_wrapper(tmp_path):
    pytest.importorskip("skrl")
    last = run_recipe(recipe("skrl"), tmp_path).strip().splitlines()[-1]
    assert last.startswith("trained ") and -1 <= float(last.split()[1]) <= 1


def test_rl_zoo_trains_ppo_from_the_shipped_hyperparameters(tmp_path):
    pytest.importorskip("rl_zoo3")
    command = recipe("RL Baselines3 Zoo", "bash").strip().split()
    assert command[:3] == ["python", "-m", "rl_zoo3.train"]
    proc = subprocess.run(
        [sys.executable, *command[1:], "--log-folder", str(tmp_path / "logs")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "total_timesteps      | 512" in proc.stdout
    assert list((tmp_path / "logs" / "ppo").glob("BlockDrop-CIFAR10-R32_*/BlockDrop-CIFAR10-R32.zip"))


def test_the_zoo_hyperparameters_are_the_sb3_defaults_for_both_env_ids():
    pytest.importorskip("rl_zoo3")
    from agents.sb3 import DEFAULTS, ResNet8Extractor
    from agents.zoo import a2c, ppo

    for module, name in ((ppo, "ppo"), (a2c, "a2c")):
        assert set(module.hyperparams) == {"BlockDrop-CIFAR10-R32", "BlockDrop-CIFAR10-R110"}
        settings = module.hyperparams["BlockDrop-CIFAR10-R32"]
        assert settings["policy_kwargs"]["features_extractor_class"] is ResNet8Extractor
        assert {k: v for k, v in settings.items() if k in DEFAULTS[name] and k != "n_steps"} == {
            k: v for k, v in DEFAULTS[name].items() if k != "n_steps"
        }
    assert ppo.hyperparams["BlockDrop-CIFAR10-R32"]["n_steps"] * 16 == DEFAULTS["ppo"]["batch_size"]


def test_gymnasiums_async_vector_env_steps_real_images_with_forked_workers():
    from blockdrop_env.checkpoint import DEFAULT_CHECKPOINT
    from blockdrop_env.data import find_dataset

    from .test_env import ASYNC_SCRIPT

    data_dir = find_dataset("cifar10").parent
    proc = subprocess.run(
        [sys.executable, "-c", ASYNC_SCRIPT, str(data_dir), str(DEFAULT_CHECKPOINT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "stepped", proc.stderr[-2000:]
