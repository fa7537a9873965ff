"""The options of the networks' forward that the training scripts share (see
``blockdrop_env.inference`` and ``blockdrop_env.device``)."""

from __future__ import annotations

from dataclasses import dataclass

from blockdrop_env.device import Precision
from blockdrop_env.inference import CompileMode, FusedKernels


@dataclass
class ForwardArgs:
    compile: CompileMode | None = None
    """torch.compile mode of the env's ResNet forward and of the BlockDrop policy (on an H200:
    "max-autotune-no-cudagraphs"); compiling costs a minute or more per batch size."""
    fused: FusedKernels | None = None
    """Fused Triton kernels for the env's residual blocks, "one" or "two" per block (CUDA; see
    blockdrop_env.fused_blocks and results/bench); then --compile compiles the policy alone."""
    precision: Precision = "auto"
    """auto: half precision where the device has it natively (CUDA; CPUs with AVX-512-BF16 or
    AMX), for the env's forward and for training (fp32 weights and optimiser state); fp32: fp32
    everywhere, for checking."""

    def env_forward(self) -> dict[str, object]:
        """The env's keyword arguments: fused blocks, else the compiled (or eager) forward."""
        return {"compile": None if self.fused else self.compile, "fused": self.fused, "precision": self.precision}
