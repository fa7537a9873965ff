"""Benchmarks: throughput of the env and agents as ratios to a reference measured in the same run,
and the agreement of the optimised ResNet forward with the plain one.

    python -m experiments.bench                  # sizes by device: small on the CPU; into runs/bench
    python -m experiments.bench --out results/bench/h200

The reference is the plain fp32 eager masked ResNet-32 forward (images/s) at ``reference_batch``.
Then: the env's ResNet forward (``blockdrop_env.inference``) with its options added one at a time
(half precision, channels_last, chunking, gather/scatter of dropped blocks, compilation, fused Triton blocks
on CUDA); the vector env's ``step`` (env steps/s) over batch sizes, eager and compiled; the
scoring of two actions on the same images (a sampled and a greedy one, as the curriculum scores
them) with their shared prefix run once, against both run as one stacked batch, on the ResNet-32
and the ResNet-110 at several curriculum stages; the BlockDrop agent's curriculum training
(images/s, and the time of a 50,000-image epoch at that rate) and finetuning (steps/s);
pretraining the ResNet-32 (images/s); SB3's PPO and A2C and sb3-contrib's TRPO through the adapter
(env steps/s), TRPO with the options of ``TRPO_VARIANTS``.
Where the default precision is not fp32 (CPUs with native bf16), the step, curriculum, finetuning
and pretraining figures are measured in fp32 too (``precision="fp32"``).
Agreement: the test split under the same actions (every block; 9 of 15 at random) through the
plain and each optimised forward: the share of identical rewards and the accuracy of each.
Deploy: the shipped agents as classifiers beside the shipped static ResNets (``experiments.deploy``):
accuracy, FLOPs, batch-1 latency and throughput, each as a ratio to the full ResNet; ``deploy.png``
plots accuracy against FLOPs and against latency.
``--sections`` picks and orders what is measured after the reference.
Writes ``bench.json`` and ``bench.md``, rewritten after every figure: a run cut off (the GPU
machine's time limit) keeps the figures it finished, marked incomplete.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Literal, get_args

import torch

from agents.baselines import FullPolicy, RandomK
from agents.evaluation import Evaluation, evaluate, make_eval_env
from agents.pretrained import list_policies, policy_path
from agents.reinforce import BlockDropAgent, FinetuneForward, ReinforceConfig, make_optimizer, train_step
from agents.sb3 import DEFAULTS, make_algorithm
from blockdrop_env.checkpoint import atomic_write_text, load_resnet, run_metadata, shipped_depths
from blockdrop_env.data import load_cifar, random_crop_flip
from blockdrop_env.device import Precision, resolve_device, synchronize, training_dtype
from blockdrop_env.inference import PLAIN, CompileMode, ForwardOptions, FusedKernels, MaskedPredictor
from blockdrop_env.resnet import CifarResNet
from blockdrop_env.sb3 import SB3VecEnv
from blockdrop_env.vector_env import BlockDropVectorEnv
from blockdrop_env.wrappers import CurriculumVectorWrapper
from experiments import deploy
from experiments.cli import DataArgs, check_device, check_writable, flag, require, require_positive, run
from experiments.pretrain_resnet import sgd_step

# TRPO's cost is its conjugate-gradient steps (Hessian-vector products through the ResNet-8 trunk)
# and its critic epochs: its defaults here (agents.sb3.DEFAULTS), then with sb3-contrib's own
# defaults for the options that cut them, one at a time and all together.
TRPO_VARIANTS: tuple[dict[str, object], ...] = (
    {},
    {"sub_sampling_factor": 4},
    {"cg_max_steps": 15},
    {"n_critic_updates": 10},
    {"sub_sampling_factor": 1, "cg_max_steps": 15, "n_critic_updates": 10},
)

Section = Literal["forward", "step", "pair", "curriculum", "finetune", "pretrain", "sb3", "agreement", "deploy"]


@dataclass
class Args(DataArgs):
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda."""
    sections: tuple[Section, ...] = (
        "forward",
        "step",
        "pair",
        "curriculum",
        "finetune",
        "pretrain",
        "sb3",
        "agreement",
        "deploy",
    )
    """What to measure after the reference, in this order (a time-boxed run can do the cheap ones first)."""
    reference_batch: int | None = None
    """Batch of the reference forward; default 8192 on CUDA, 256 on the CPU."""
    env_batches: tuple[int, ...] | None = None
    """Vector-env sizes; default 256..16384 on CUDA, 64..1024 on the CPU."""
    compile: CompileMode | None = "default"
    """torch.compile mode of the compiled rows ("max-autotune-no-cudagraphs" is the fastest
    measured on an H200 but compiles for minutes; "max-autotune" adds CUDA graphs); None skips them."""
    compiled_batches: tuple[int, ...] | None = None
    """Vector-env sizes measured compiled too (each compiles once); default 8192 on CUDA, 256 on the CPU."""
    agent_batch: int | None = None
    """Curriculum batch; default 2048 on CUDA, 256 on the CPU."""
    finetune_batch: int = 256
    """Finetuning batch."""
    pretrain_batch: int = 256
    """Batch of the pretraining step (the shipped ResNet-32's recipe)."""
    min_seconds: float = 2.0
    """Each figure times repeats for at least this long, after one warm-up call."""
    sb3_steps: int | None = None
    """Env steps of each SB3 measurement; default 65,536 on CUDA, 2,048 on the CPU."""
    epoch_images: int | None = None
    """Images of the timed curriculum epoch; default 50,000 (the paper's epoch) on CUDA, 10,000 on the CPU."""
    agreement_limit: int | None = None
    """Test images of the agreement check (default: all 10,000)."""
    deploy_agents: tuple[str, ...] | None = None
    """Agents of the deploy section (shipped names or agent.pt files); default: every shipped one."""
    deploy_depths: tuple[int, ...] | None = None
    """Static ResNets of the deploy section (shipped depths); default: every shipped one. The
    ResNet-32 and each agent's depth are always measured: the ratios are taken to them."""
    latency_images: int = 1000
    """Test images classified one at a time for the batch-1 latency percentiles."""
    throughput_batches: tuple[int, ...] = (64, 256)
    """Batches of the deploy section's throughput (each a pass over the whole test split)."""
    deploy_rounds: int = 5
    """Rounds of the deploy section: the models take turns, each timed on a 1/rounds share of the
    images per round, so that a drift in the machine's speed reaches them all alike."""
    out: Path = Path("runs/bench")
    """Folder for bench.json and bench.md (rewritten after every figure, so a run cut off keeps its
    figures); the committed results live under results/bench/, each with its command."""
    checkpoint: Path | None = None
    """ResNet checkpoint; default: the shipped one."""


def timed(fn: Callable[[], object], device: torch.device, min_seconds: float) -> float:
    """Seconds per call of ``fn``: one warm-up call, then repeats for at least ``min_seconds``."""
    fn()
    synchronize(device)
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        synchronize(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return elapsed / calls


def forward_variants(device: torch.device, compile: CompileMode | None) -> list[ForwardOptions]:
    """The device's fastest forward built up one option at a time, then variations of it."""
    best = ForwardOptions.for_device(device)
    if device.type == "cuda":
        variants = [replace(PLAIN, dtype="bfloat16"), replace(PLAIN, dtype="float16"), best]
        variants += [replace(best, dtype="bfloat16"), replace(best, gather_below=1.1)]
        variants += [replace(best, fused="two"), replace(best, fused="one")]
    else:
        fp32 = ForwardOptions.for_device(device, precision="fp32")
        variants = [replace(PLAIN, chunk=fp32.chunk), replace(fp32, gather_below=0.0), fp32]
        if best != fp32:  # native bf16: autocast, then its own chunk size
            variants += [replace(fp32, dtype="bfloat16"), best]
        variants.append(replace(best, chunk=None, gather_below=1.1))
    return variants + ([ForwardOptions.for_device(device, compile)] if compile else [])


def describe(options: ForwardOptions, device: torch.device) -> str:
    """The options in words, marking the device's default."""
    parts = [{"float32": "fp32", "float16": "fp16 autocast", "bfloat16": "bf16 autocast"}[options.dtype]]
    parts += ["channels_last"] if options.channels_last else []
    parts += [f"chunks of {options.chunk}"] if options.chunk else []
    if options.gather_below > 1:
        parts.append("gather/scatter of every partly kept block")
    elif options.gather_below > 0:
        parts.append(f"gather/scatter of blocks kept by < {options.gather_below:.0%}")
    parts += [f"fused Triton blocks ({options.fused} kernel(s) per block)"] if options.fused else []
    parts += [f"compiled ({options.compile})"] if options.compile else ["eager"]
    default = " (the env's default)" if options == ForwardOptions.for_device(device) else ""
    return ", ".join(parts) + default


class Failures(list):
    """Optional measurements (compiled, fused) that failed: kept with their error, so that one
    broken path does not lose the other figures of a run. ``on_failure`` is called after each."""

    def __init__(self, on_failure: Callable[[], object] | None = None) -> None:
        super().__init__()
        self.on_failure = on_failure

    def attempt(self, name: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - reported in the output, never silently
            self.append(f"{name}: {type(e).__name__}: {str(e)[:300]}")
            print(f"FAILED {self[-1]}", flush=True)
            if self.on_failure is not None:
                self.on_failure()


def agreement(
    args: Args,
    variants: list[ForwardOptions],
    failures: Failures | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """The test split through the plain forward and each of ``variants``, under the same actions.
    Variants other than the device's default that fail go to ``failures`` when given; ``on_row`` sees
    each row as it is measured."""
    device = resolve_device(args.device)
    common = {"data_dir": args.data_dir, "checkpoint": args.checkpoint, "device": device}
    policies = {"every block": FullPolicy, "9 of 15 at random": lambda: RandomK(9, seed=0)}
    rows: list[dict] = []

    def compare(action: str, plain: Evaluation, options: ForwardOptions) -> None:
        fast = evaluate(make_eval_env(limit=args.agreement_limit, forward=options, **common), policies[action]())
        assert torch.equal(fast.keep, plain.keep)  # same actions: equal rewards iff equal correctness
        rows.append(
            {
                "forward": describe(options, device),
                "actions": action,
                "images": plain.num_images,
                "identical_rewards": (fast.correct == plain.correct).double().mean().item(),
                "accuracy_plain": plain.accuracy,
                "accuracy": fast.accuracy,
            }
        )
        if on_row is not None:
            on_row(rows[-1])

    for action, make_policy in policies.items():
        plain = evaluate(make_eval_env(limit=args.agreement_limit, plain=True, **common), make_policy())
        for options in variants:
            if options != ForwardOptions.for_device(device) and failures is not None:
                name = f"agreement of {describe(options, device)}, {action}"
                failures.attempt(name, lambda: compare(action, plain, options))  # noqa: B023 - called at once
            else:
                compare(action, plain, options)
    return rows


class Report:
    """The figures of a run, as rows with their ratio to the first (the reference). Every change
    rewrites ``bench.json`` and ``bench.md``: a run cut off (the GPU machine's time limit) keeps what
    it measured, marked incomplete."""

    def __init__(self, args: Args, device: torch.device) -> None:
        self.out, self.device = args.out, device
        self.rows: list[dict] = []
        self.agreement: list[dict] = []
        self.deploy: list[dict] = []
        self.failures = Failures(on_failure=self.save)
        cuda = device.type == "cuda"
        self.header = {
            "device": torch.cuda.get_device_name(device)
            if cuda
            else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
            "torch": torch.__version__,
            "args": {k: str(v) for k, v in asdict(args).items()},
            **run_metadata(),
        }

    def record(self, name: str, value: float, unit: str, per_image: float) -> None:
        """One figure; ``per_image`` (images/s, 0 when it has none) gives its ratio to the reference."""
        reference = self.rows[0]["images_per_s"] if self.rows else per_image
        self.rows.append(
            {
                "name": name,
                "value": value,
                "unit": unit,
                "images_per_s": per_image,
                "ratio_to_reference": per_image / reference,
            }
        )
        print(f"{name}: {value:,.2f} {unit}", flush=True)
        self.save()

    def add_agreement(self, row: dict) -> None:
        self.agreement.append(row)
        self.save()

    def result(self, complete: bool = False) -> dict:
        cuda = self.device.type == "cuda"
        return {
            "complete": complete,
            "rows": self.rows,
            "agreement": self.agreement,
            "deploy": self.deploy,
            "failures": self.failures,
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(self.device) / 2**30 if cuda else None,
            **self.header,
        }

    def save(self, complete: bool = False) -> dict:
        result = self.result(complete)
        atomic_write_text(self.out / "bench.json", json.dumps(result, indent=2) + "\n")
        atomic_write_text(self.out / "bench.md", markdown(result) + "\n")
        return result


def markdown(result: dict) -> str:
    """The report as Markdown tables."""
    lines = [
        f"Device: {result['device']}; torch {result['torch']}; {result['date']}; commit {result['git_commit'][:10]}",
        "",
    ]
    if not result["complete"]:
        lines += ["**Incomplete: the run stopped before its end; the figures below are the ones it finished.**", ""]
    lines += ["| measurement | value | unit | ratio to reference (images/s) |", "|---|---|---|---|"]
    lines += [
        f"| {r['name']} | {r['value']:,.2f} | {r['unit']} | {r['ratio_to_reference']:.2f} |"
        if r["images_per_s"]
        else f"| {r['name']} | {r['value']:,.2f} | {r['unit']} | |"
        for r in result["rows"]
    ]
    if result["peak_gpu_memory_gib"] is not None:
        lines += ["", f"Peak GPU memory: {result['peak_gpu_memory_gib']:.2f} GiB"]
    if result["agreement"]:
        lines += [
            "",
            "Agreement with the plain fp32 forward on the test split, same actions:",
            "",
            "| forward | actions | images | identical rewards (%) | plain accuracy (%) | accuracy (%) | difference |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {a['forward']} | {a['actions']} | {a['images']:,} | {100 * a['identical_rewards']:.2f} | "
            f"{100 * a['accuracy_plain']:.2f} | {100 * a['accuracy']:.2f} | "
            f"{100 * (a['accuracy'] - a['accuracy_plain']):+.2f} points |"
            for a in result["agreement"]
        ]
    if result["deploy"]:
        title = "Deployed classifiers on the test split (batch norms folded; speed-ups against the reference):"
        lines += ["", title, ""]
        lines += [deploy.markdown(result["deploy"])]
    if result["failures"]:
        lines += ["", "Failed (the rows above are unaffected):", ""] + [f"- {f}" for f in result["failures"]]
    return "\n".join(lines)


def check_args(args: Args) -> None:
    """Refuse arguments that would loop for ever or be silently replaced, before any work."""
    seconds = args.min_seconds
    require(math.isfinite(seconds) and seconds > 0, f"--min-seconds must be a finite number > 0; got {seconds}")
    batches = ("reference_batch", "agent_batch", "finetune_batch", "pretrain_batch")
    require_positive(args, *batches, "sb3_steps", "epoch_images", "agreement_limit", "latency_images", "deploy_rounds")
    for name in ("env_batches", "compiled_batches", "throughput_batches"):
        values = getattr(args, name) or ()
        require(all(v >= 1 for v in values), f"{flag(name)} must be positive batch sizes; got {values}")
    if "deploy" in args.sections:
        shipped = shipped_depths()
        depths = args.deploy_depths or ()
        require(set(depths) <= set(shipped), f"--deploy-depths must be among the shipped {shipped}; got {depths}")
        for name in args.deploy_agents or ():
            policy_path(name)  # an unknown name or a missing file is refused here, naming what exists


def main(args: Args) -> dict:
    check_args(args)
    check_writable(args.out)
    check_device(args.device)
    args.fetch_data()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    ref_batch = args.reference_batch or (8192 if cuda else 256)
    env_batches = args.env_batches or ((256, 1024, 4096, 8192, 16384) if cuda else (64, 256, 1024))
    compiled_batches = () if args.compile is None else args.compiled_batches or ((8192,) if cuda else (256,))
    agent_batch = args.agent_batch or (2048 if cuda else 256)
    sb3_steps = args.sb3_steps or (65_536 if cuda else 2048)
    epoch_images = args.epoch_images or (50_000 if cuda else 10_000)
    data = {"device": device, "data_dir": args.data_dir}
    common = {**data, "checkpoint": args.checkpoint}
    compiled = f"compiled ({args.compile})"
    report = Report(args, device)
    record = report.record
    attempt = report.failures.attempt  # optional measurements: a failure is saved and the run goes on

    def forward_rate(fn: Callable[[], object]) -> float:
        with torch.no_grad():
            return ref_batch / timed(fn, device, args.min_seconds)

    # The reference, then the env's forward on the same images and actions (60% of blocks kept)
    # under each option added in turn: what each one buys.
    env = BlockDropVectorEnv(num_envs=ref_batch, split="train", augment=False, plain=True, **common)
    images, _ = env.reset(seed=0)
    keep = torch.rand(ref_batch, env.num_blocks, device=device, generator=torch.Generator(device).manual_seed(0)) < 0.6
    reference = forward_rate(lambda: env.resnet(images, keep))
    record(f"reference: fp32 eager masked ResNet-32 forward, batch {ref_batch}", reference, "images/s", reference)

    def measure_forward(options: ForwardOptions) -> None:
        predict = MaskedPredictor(load_resnet(args.checkpoint, device=device)[0], options)
        t0 = time.perf_counter()
        predict(images, keep)  # compiles, when compiled
        if options.compile:
            record(f"compile time of the env forward ({options.compile})", time.perf_counter() - t0, "s", 0.0)
        rate = forward_rate(lambda: predict(images, keep))
        record(f"env forward: {describe(options, device)}", rate, "images/s", rate)

    # Where training runs in half precision by default, what it bought: the same figures in fp32.
    precisions: tuple[Precision, ...] = ("auto", "fp32") if training_dtype(device) != torch.float32 else ("auto",)
    in_words = {"auto": "", "fp32": ", fp32"}

    def measure_step(batch: int, how: str, **kwargs: object) -> None:
        env = BlockDropVectorEnv(num_envs=batch, split="train", **kwargs, **common)
        env.reset(seed=0)
        keep = torch.rand(batch, env.num_blocks, device=device) < 0.6
        seconds = timed(lambda: env.step(keep), device, args.min_seconds)
        record(f"vector env step, batch {batch}{how}", batch / seconds, "env steps/s", batch / seconds)

    generator = torch.Generator(device).manual_seed(0)

    def measure_pair(depth: int) -> None:
        """Two actions scored with their shared prefix run once, as a ratio to one stacked forward of
        both, at curriculum stages from the first (one block decided) to the last (all decided)."""
        checkpoint = args.checkpoint if depth == 32 else None  # --checkpoint is a ResNet-32
        env = BlockDropVectorEnv(agent_batch, split="train", depth=depth, checkpoint=checkpoint, **data)
        images, _ = env.reset(seed=0)
        k, task = env.num_blocks, env.task
        g = torch.Generator(device).manual_seed(0)
        for decided in sorted({1, k // 4, k // 2, k}):
            forced = torch.arange(k, device=device) < k - decided
            greedy = (torch.rand(agent_batch, k, device=device, generator=g) < 0.6) | forced
            # Sampled from the bounded probabilities: each decided block differs with chance 1 - alpha.
            flip = (torch.rand(agent_batch, k, device=device, generator=g) < 0.2) & ~forced
            both = torch.stack([greedy ^ flip, greedy])
            pairs = images.repeat(2, 1, 1, 1)
            stacked = timed(lambda b=both, x=pairs: task.predict(x, b.flatten(0, 1)), device, args.min_seconds)
            paired = timed(lambda b=both: task.predict.pair(images, b[0], b[1]), device, args.min_seconds)
            what = f"two actions, ResNet-{depth}, batch {agent_batch}, {decided} of {k} blocks decided"
            record(f"{what}: stacked (before)", agent_batch / stacked, "images/s", agent_batch / stacked)
            record(f"{what}: shared prefix once", agent_batch / paired, "images/s", agent_batch / paired)
            record(f"{what}: shared prefix, speed-up", stacked / paired, "x", 0.0)

    def measure_curriculum(
        how: str, policy_compile: CompileMode | None = None, precision: Precision = "auto", **env_kwargs: object
    ) -> None:
        env = CurriculumVectorWrapper(
            BlockDropVectorEnv(agent_batch, split="train", precision=precision, **env_kwargs, **common), 15
        )
        env.reset(seed=0)
        agent = BlockDropAgent(device=device, compile=policy_compile, precision=precision)
        config = ReinforceConfig()
        optimizer = make_optimizer(agent, env, config)
        seconds = timed(lambda: train_step(agent, env, optimizer, config, generator), device, args.min_seconds)
        rate = agent_batch / seconds
        record(f"BlockDrop curriculum step, batch {agent_batch}{how}", rate, "images/s", rate)
        # A whole epoch, timed as it runs (its steps' statistics stay on the device until the end).
        steps = math.ceil(epoch_images / agent_batch)
        t0 = time.perf_counter()
        stats = [train_step(agent, env, optimizer, config, generator) for _ in range(steps)]
        torch.stack([s["loss"] for s in stats]).sum().item()  # waits for the last step
        seconds = time.perf_counter() - t0
        images = steps * agent_batch
        record(f"BlockDrop curriculum epoch of {images:,} images, timed{how}", seconds, "s", images / seconds)

    def measure_finetune(precision: Precision, depth: int) -> None:
        """Joint finetuning steps with the dropped blocks masked (computed, then discarded) and not run
        at all, under a policy whose greedy action keeps a third, then three quarters, of the blocks."""
        checkpoint = args.checkpoint if depth == 32 else None  # --checkpoint is a ResNet-32
        batch = args.finetune_batch
        env = BlockDropVectorEnv(
            batch, split="train", depth=depth, checkpoint=checkpoint, penalty=-10.0, precision=precision, **data
        )
        env.reset(seed=0)
        k = env.num_blocks
        for kept in (k // 3, 3 * k // 4):
            what, how = f"ResNet-{depth}, greedy keeps {kept} of {k} blocks, batch {batch}", in_words[precision]
            rates = {}
            for forward in get_args(FinetuneForward):
                agent = BlockDropAgent(num_blocks=k, device=device, precision=precision)
                with torch.no_grad():  # keep probabilities 0.9 on the first `kept` blocks, 0.1 on the rest
                    agent.policy.keep_head.weight.zero_()
                    agent.policy.keep_head.bias.copy_(torch.where(torch.arange(k) < kept, 2.2, -2.2))
                config = ReinforceConfig(
                    lr=1e-4, beta=0.0, finetune=True, finetune_bn="train", finetune_forward=forward
                )
                optimizer = make_optimizer(agent, env, config)
                step = partial(train_step, agent, env, optimizer, config, generator)
                seconds = timed(step, device, args.min_seconds)
                rates[forward] = 1 / seconds
                record(f"BlockDrop finetuning step, {what}, {forward}{how}", 1 / seconds, "steps/s", batch / seconds)
            record(
                f"BlockDrop finetuning, {what}: kept blocks only, speed-up", rates["kept"] / rates["masked"], "x", 0.0
            )

    def measure_pretrain(precision: Precision) -> None:
        """An SGD step of ``experiments.pretrain_resnet`` on the ResNet-32 (augmentation included)."""
        model = CifarResNet(32).to(device).to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        batch = args.pretrain_batch
        x = torch.randint(256, (batch, 3, 32, 32), dtype=torch.uint8, device=device, generator=generator)
        labels = torch.randint(10, (batch,), device=device, generator=generator)
        step = lambda: sgd_step(model, optimizer, random_crop_flip(x, generator), labels, precision)  # noqa: E731
        rate = batch / timed(step, device, args.min_seconds)
        record(f"pretraining step of the ResNet-32, batch {batch}{in_words[precision]}", rate, "images/s", rate)

    def measure_sb3(algorithm: str, options: dict[str, object]) -> None:
        env = BlockDropVectorEnv(num_envs=agent_batch, split="train", **common)
        model = make_algorithm(algorithm, SB3VecEnv(env), seed=0, device=device, **options)
        model.learn(agent_batch * DEFAULTS[algorithm]["n_steps"])  # warm-up: one rollout and update
        t0 = time.perf_counter()
        model.learn(sb3_steps)
        rate = sb3_steps / (time.perf_counter() - t0)
        how = f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else ""
        record(f"SB3 {algorithm.upper()}{how} through the adapter, {agent_batch} envs", rate, "env steps/s", rate)

    def forward_section() -> None:
        for options in forward_variants(device, args.compile):
            if options.compile or options.fused:
                attempt(f"env forward: {describe(options, device)}", lambda o=options: measure_forward(o))
            else:
                measure_forward(options)

    def step_section() -> None:
        for batch in env_batches:
            measure_step(batch, "")
        if "fp32" in precisions:
            measure_step(ref_batch, in_words["fp32"], precision="fp32")
        for batch in compiled_batches:
            attempt(f"env step {compiled}", lambda b=batch: measure_step(b, f", {compiled}", compile=args.compile))
        for batch in (compiled_batches or (8192,)) if cuda else ():  # Triton needs a GPU
            for kernels in get_args(FusedKernels):
                how = f", fused Triton blocks ({kernels})"
                attempt(f"env step{how}", lambda b=batch, k=kernels, h=how: measure_step(b, h, fused=k))

    def curriculum_section() -> None:
        for precision in precisions:
            measure_curriculum(in_words[precision], precision=precision)
        if args.compile:
            how = f", env and policy {compiled}"
            attempt(f"curriculum step{how}", lambda: measure_curriculum(how, args.compile, compile=args.compile))
        for kernels in get_args(FusedKernels) if cuda else ():
            how = f", env fused ({kernels})" + (f", policy {compiled}" if args.compile else "")
            attempt(f"curriculum step{how}", lambda k=kernels, h=how: measure_curriculum(h, args.compile, fused=k))

    def agreement_section() -> None:
        default = ForwardOptions.for_device(device)
        fp32 = ForwardOptions.for_device(device, precision="fp32")
        variants = [default] + ([fp32] if fp32 != default else [])
        # The other half precision (on the CPU both), on the default's layout and chunks.
        others = ("bfloat16",) if cuda else ("bfloat16", "float16")
        variants += [replace(default, dtype=d) for d in others if d != default.dtype]
        variants += [ForwardOptions.for_device(device, args.compile)] if args.compile else []
        variants += [ForwardOptions.for_device(device, fused=k) for k in ("one", "two")] if cuda else []
        agreement(args, variants, report.failures, on_row=report.add_agreement)

    def deploy_section() -> None:
        agents = args.deploy_agents if args.deploy_agents is not None else tuple(list_policies())
        models = [deploy.shipped_agent(name, device) for name in agents]
        depths = set(args.deploy_depths or shipped_depths()) | {deploy.STATIC_REFERENCE_DEPTH}
        models = [deploy.static_resnet(d, device) for d in sorted(depths | {m.depth for m in models})] + models
        images, labels = (t.to(device) for t in load_cifar("test", args.data_dir))
        rows = deploy.measure(
            models,
            images,
            labels,
            args.latency_images,
            args.throughput_batches,
            args.deploy_rounds,
            on_round=lambda r: print(f"deploy: round {r} measured", flush=True),
        )
        report.deploy = deploy.with_ratios(rows)
        deploy.plot(report.deploy, args.out / "deploy.png")
        report.save()

    sections: dict[str, Callable[[], None]] = {
        "forward": forward_section,
        "step": step_section,
        "pair": lambda: [measure_pair(depth) for depth in (32, 110)],
        "curriculum": curriculum_section,
        "finetune": lambda: [measure_finetune(precision, depth) for precision in precisions for depth in (32, 110)],
        "pretrain": lambda: [measure_pretrain(precision) for precision in precisions],
        "sb3": lambda: [
            measure_sb3(a, o) for a, o in [("ppo", {}), ("a2c", {})] + [("trpo", v) for v in TRPO_VARIANTS]
        ],
        "agreement": agreement_section,
        "deploy": deploy_section,
    }
    for section in args.sections:
        sections[section]()

    result = report.save(complete=True)
    print(markdown(result))
    return result


if __name__ == "__main__":
    run(main, Args, "experiments.bench", __doc__)
