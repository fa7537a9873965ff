"""Benchmarks: throughput of the env and agents as ratios to a reference measured in the same run.

    python -m experiments.bench                  # sizes by device: small on the CPU
    python -m experiments.bench --out results/bench/h200

The reference is the plain fp32 eager masked ResNet-32 forward (images/s) at ``reference_batch``.
Then: the vector env's ``step`` (env steps/s) over batch sizes, the BlockDrop agent's curriculum
training (images/s, and the time of a 50,000-image epoch at that rate) and finetuning (steps/s),
and SB3 PPO through the adapter (env steps/s). Writes ``bench.json`` and ``bench.md``.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import tyro

from agents.reinforce import BlockDropAgent, ReinforceConfig, make_optimizer, train_step
from agents.sb3 import make_algorithm
from blockdrop_env.checkpoint import atomic_write_text, run_metadata
from blockdrop_env.device import resolve_device
from blockdrop_env.sb3 import SB3VecEnv
from blockdrop_env.vector_env import BlockDropVectorEnv
from blockdrop_env.wrappers import CurriculumVectorWrapper


@dataclass
class Args:
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda."""
    reference_batch: int | None = None
    """Batch of the reference forward; default 8192 on CUDA, 256 on the CPU."""
    env_batches: tuple[int, ...] | None = None
    """Vector-env sizes; default 256..16384 on CUDA, 64..512 on the CPU."""
    agent_batch: int | None = None
    """Curriculum batch; default 2048 on CUDA, 256 on the CPU."""
    finetune_batch: int = 256
    """Finetuning batch."""
    min_seconds: float = 2.0
    """Each figure times repeats for at least this long, after one warm-up call."""
    ppo_steps: int | None = None
    """Env steps of the PPO measurement; default 65,536 on CUDA, 2,048 on the CPU."""
    out: Path = Path("results/bench/cpu")
    """Folder for bench.json and bench.md."""
    data_dir: str | None = None
    """Folder holding the CIFAR batches; default: the package's search."""
    checkpoint: Path | None = None
    """ResNet checkpoint; default: the shipped one."""


def timed(fn: Callable[[], object], device: torch.device, min_seconds: float) -> float:
    """Seconds per call of ``fn``: one warm-up call, then repeats for at least ``min_seconds``."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return elapsed / calls


def main(args: Args) -> dict:
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    ref_batch = args.reference_batch or (8192 if cuda else 256)
    env_batches = args.env_batches or ((256, 1024, 4096, 8192, 16384) if cuda else (64, 256, 512))
    agent_batch = args.agent_batch or (2048 if cuda else 256)
    ppo_steps = args.ppo_steps or (65_536 if cuda else 2048)
    common = {"device": device, "data_dir": args.data_dir, "checkpoint": args.checkpoint}
    rows: list[dict] = []

    def record(name: str, value: float, unit: str, per_image: float) -> None:
        rows.append({"name": name, "value": value, "unit": unit, "images_per_s": per_image})

    # Reference: plain fp32 eager masked forward.
    env = BlockDropVectorEnv(num_envs=ref_batch, split="train", augment=False, **common)
    resnet = env.resnet
    images, _ = env.reset(seed=0)
    keep = torch.rand(ref_batch, env.num_blocks, device=device) < 0.6
    with torch.no_grad():
        seconds = timed(lambda: resnet(images, keep), device, args.min_seconds)
    reference = ref_batch / seconds
    record(f"reference: fp32 eager masked ResNet-32 forward, batch {ref_batch}", reference, "images/s", reference)

    for batch in env_batches:
        env = BlockDropVectorEnv(num_envs=batch, split="train", **common)
        env.reset(seed=0)
        keep = torch.rand(batch, env.num_blocks, device=device) < 0.6
        seconds = timed(lambda env=env, keep=keep: env.step(keep), device, args.min_seconds)
        record(f"vector env step, batch {batch}", batch / seconds, "env steps/s", batch / seconds)

    env = CurriculumVectorWrapper(BlockDropVectorEnv(num_envs=agent_batch, split="train", **common), 15)
    env.reset(seed=0)
    agent, config = BlockDropAgent(device=device), ReinforceConfig()
    optimizer = make_optimizer(agent, env, config)
    generator = torch.Generator(device).manual_seed(0)
    seconds = timed(lambda: train_step(agent, env, optimizer, config, generator), device, args.min_seconds)
    rate = agent_batch / seconds
    record(f"BlockDrop curriculum step, batch {agent_batch}", rate, "images/s", rate)
    record("BlockDrop curriculum epoch of 50,000 images at that rate", 50_000 / rate, "s", rate)

    env = BlockDropVectorEnv(num_envs=args.finetune_batch, split="train", penalty=-10.0, **common)
    env.reset(seed=0)
    config = ReinforceConfig(lr=1e-4, beta=0.0, finetune=True)
    optimizer = make_optimizer(agent, env, config)
    seconds = timed(lambda: train_step(agent, env, optimizer, config, generator), device, args.min_seconds)
    record(
        f"BlockDrop finetuning step, batch {args.finetune_batch}", 1 / seconds, "steps/s", args.finetune_batch / seconds
    )

    env = BlockDropVectorEnv(num_envs=agent_batch, split="train", **common)
    model = make_algorithm("ppo", SB3VecEnv(env), seed=0, device=device)
    model.learn(agent_batch * 4)  # warm-up
    t0 = time.perf_counter()
    model.learn(ppo_steps)
    rate = ppo_steps / (time.perf_counter() - t0)
    record(f"SB3 PPO through the adapter, {agent_batch} envs", rate, "env steps/s", rate)

    for r in rows:
        r["ratio_to_reference"] = r["images_per_s"] / reference
    result = {
        "rows": rows,
        "device": torch.cuda.get_device_name(device)
        if cuda
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "torch": torch.__version__,
        "args": {k: str(v) for k, v in asdict(args).items()},
        **run_metadata(),
    }
    lines = [
        f"Device: {result['device']}; torch {torch.__version__}; {result['date']}; commit {result['git_commit'][:10]}",
        "",
        "| measurement | value | unit | ratio to reference (images/s) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['name']} | {r['value']:,.2f} | {r['unit']} | {r['ratio_to_reference']:.2f} |" for r in rows]
    if cuda:
        lines += ["", f"Peak GPU memory: {result['peak_gpu_memory_gib']:.2f} GiB"]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "bench.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out / "bench.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
