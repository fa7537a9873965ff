"""BlockDrop as a Gymnasium environment: choose which residual blocks of a pretrained CIFAR
ResNet to run on each image, rewarded for being right with few blocks."""

from gymnasium.envs.registration import register, registry

from .device import one_thread_in_forked_children
from .env import BlockDropEnv
from .vector_env import BlockDropVectorEnv

__all__ = ["BlockDropEnv", "BlockDropVectorEnv"]

# Forked workers (Gymnasium's async vector env, Tianshou's subprocess envs) would hang in torch's
# thread pool: they run on one thread instead (see the function).
one_thread_in_forked_children()

# BlockDrop-CIFAR10-R32: 15 blocks; BlockDrop-CIFAR10-R110: the paper's flagship, 54 blocks. Both
# ResNets ship with the package (checkpoint=<file> scores with another).
for _depth in (32, 110):
    if f"BlockDrop-CIFAR10-R{_depth}" not in registry:
        register(
            id=f"BlockDrop-CIFAR10-R{_depth}",
            entry_point="blockdrop_env.env:BlockDropEnv",
            vector_entry_point="blockdrop_env.vector_env:BlockDropVectorEnv",
            # The env checks the order itself, with a ValueError that says what to do.
            order_enforce=False,
            kwargs={"dataset": "cifar10", "depth": _depth},
        )
