"""BlockDrop as a Gymnasium environment: choose which residual blocks of a pretrained CIFAR
ResNet to run on each image, rewarded for being right with few blocks."""

from gymnasium.envs.registration import register, registry

from .env import BlockDropEnv
from .vector_env import BlockDropVectorEnv

__all__ = ["BlockDropEnv", "BlockDropVectorEnv"]

if "BlockDrop-CIFAR10-R32" not in registry:
    register(
        id="BlockDrop-CIFAR10-R32",
        entry_point="blockdrop_env.env:BlockDropEnv",
        vector_entry_point="blockdrop_env.vector_env:BlockDropVectorEnv",
        # The env checks the order itself, with a ValueError that says what to do.
        order_enforce=False,
        kwargs={"dataset": "cifar10", "depth": 32},
    )
