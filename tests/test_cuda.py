"""Checks that need a GPU, skipped elsewhere: no host synchronisation inside an env or agent step,
and the fused Triton blocks in half precision against the fp32 forward.

On the GPU machine: ``python3 -m pytest -q tests/test_cuda.py``.
"""

import pytest
import torch

from agents.reinforce import BlockDropAgent, ReinforceConfig, make_optimizer, train_step
from blockdrop_env import BlockDropVectorEnv
from blockdrop_env.resnet import resnet32
from blockdrop_env.wrappers import CurriculumVectorWrapper

from .conftest import trained_like
from .test_inference import random_batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("fused", [None, "one"])
def test_env_and_agent_steps_never_wait_on_the_gpu(env_kwargs, fused):
    kwargs = {**env_kwargs, "device": "cuda", "fused": fused}
    env = CurriculumVectorWrapper(BlockDropVectorEnv(num_envs=64, split="train", **kwargs), decided=5)
    env.reset(seed=0)
    agent, config = BlockDropAgent(device="cuda"), ReinforceConfig()
    optimizer = make_optimizer(agent, env, config)
    generator = torch.Generator("cuda").manual_seed(0)
    keep = torch.rand(64, 15, device="cuda") < 0.5
    env.step(keep)  # warm-up: allocations, cuDNN plans, Triton compilation
    train_step(agent, env, optimizer, config, generator)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call now raises
    try:
        env.step(keep)
        train_step(agent, env, optimizer, config, generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("kernels", ["one", "two"])
def test_fused_blocks_in_fp16_match_the_fp32_forward(kernels):
    from blockdrop_env.fused_blocks import fused_features

    model = trained_like(resnet32(), seed=0).cuda()
    for seed in range(3):  # fresh inputs each time: a race shows as an error that moves
        images, keep = (t.cuda() for t in random_batch(512, seed=seed))
        keep[0], keep[1] = True, False
        with torch.no_grad():
            expected = model.features(images, keep).double()
            got = fused_features(model, images, keep, torch.float16, kernels).double()
        assert torch.isfinite(got).all()
        assert (got - expected).norm() / expected.norm() < 1e-2


def test_random_k_draws_on_the_images_device():
    from agents.baselines import RandomK

    images = torch.zeros(32, 3, 32, 32, dtype=torch.uint8, device="cuda")
    first, again = RandomK(9, seed=0)(images), RandomK(9, seed=0)(images)
    assert first.device.type == "cuda" and torch.equal(first, again) and (first.sum(1) == 9).all()


def test_reward_never_waits_on_the_gpu():
    from blockdrop_env.reward import blockdrop_reward

    correct = torch.rand(64, device="cuda") < 0.5
    blocks_kept = torch.randint(16, (64,), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        reward = blockdrop_reward(correct, blocks_kept, 15, -1.0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert reward.dtype == torch.float32 and torch.equal(reward[~correct], torch.full_like(reward[~correct], -1.0))
