"""Train the BlockDrop agent: curriculum learning, then joint finetuning of policy and ResNet.

    python -m experiments.train_blockdrop --curriculum-epochs 5000 --finetune-epochs 2000
    python -m experiments.train_blockdrop --stage curriculum --curriculum-epochs 20 --limit 4096  # smoke
    python -m experiments.train_blockdrop --out runs/blockdrop/default --resume  # continue exactly

An epoch is one pass's worth of images of the train split (drawn with replacement, augmented): by
default the 45,000 images left when the validation split is held out (``--train-split trainval``
trains on all 50,000, as the shipped ResNet-32 agents were). The greedy policy is walked over the
validation split every ``--eval-every`` epochs (``--eval-split test`` walks the test split instead);
choose epochs and settings on those walks and evaluate the chosen agent on the test split once
(``experiments.evaluate``).
The checkpoint ``<out>/agent.pt`` is rewritten atomically every ``checkpoint_every`` epochs and at
the end, with everything ``--resume`` needs to continue exactly: policy, optimiser, finetuned
ResNet, epoch and the states of every random generator. TensorBoard logs go to ``<out>/tb``.

A fresh run refuses an ``--out`` that already holds one (``--resume`` continues it, ``--overwrite``
starts over). ``--resume`` refuses arguments that differ from the run's, naming each, except those
that do not change what was trained: ``--stop-after``, ``--checkpoint-every``, ``--eval-every``,
``--out``, ``--device``, ``--data-dir``, ``--compile``, ``--fused``, ``--precision``, and the epoch
counts, which may grow or shrink as long as the epochs already run keep their stage (a run is
extended by raising them). What a resumed run used is what its checkpoint records.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from time import perf_counter
from typing import Any, Literal

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from agents.evaluation import Policy, evaluate, make_eval_env
from agents.reinforce import (
    BlockDropAgent,
    EntropyBonus,
    FinetuneBatchNorm,
    ReinforceConfig,
    load_agent,
    make_optimizer,
    save_agent,
    train_step,
)
from blockdrop_env.checkpoint import load_checkpoint, load_resnet, run_metadata
from blockdrop_env.device import resolve_device
from blockdrop_env.vector_env import BlockDropVectorEnv
from blockdrop_env.wrappers import CurriculumVectorWrapper, curriculum_decided
from experiments.cli import (
    DataArgs,
    UsageError,
    check_device,
    check_writable,
    cost_note,
    refuse_overwrite,
    remove_stale_temporaries,
    require,
    require_penalty,
    require_positive,
    resume_mismatch,
    run,
)
from experiments.forward_args import ForwardArgs


@dataclass
class Args(DataArgs, ForwardArgs):
    stage: Literal["both", "curriculum", "finetune"] = "both"
    """Curriculum learning then joint finetuning, or either alone."""
    curriculum_epochs: int = 5000
    """Epochs of curriculum learning (the reference run used 5000)."""
    finetune_epochs: int = 2000
    """Epochs of joint finetuning (the paper: 2000)."""
    batch_size: int = 2048
    """Images per curriculum step."""
    finetune_batch_size: int = 256
    """Images per finetuning step."""
    lr: float = 1e-3
    """Adam learning rate in curriculum learning."""
    finetune_lr: float = 1e-4
    """Adam learning rate in finetuning, for policy and ResNet."""
    lr_decay_at: float = 0.8
    """Fraction of the finetuning epochs after which its learning rate is divided by 10."""
    penalty: float = -1.0
    """Reward of a wrong prediction in curriculum learning."""
    finetune_penalty: float = -10.0
    """Reward of a wrong prediction in finetuning (the paper: -5 or -10)."""
    finetune_bn: FinetuneBatchNorm = "frozen"
    """Batch norm of the ResNet in finetuning: frozen (eval mode, the pretrained statistics), or train
    as the authors' finetune.py (batch statistics in training steps, running averages updated)."""
    alpha: float = 0.8
    """Bound of the exploration probabilities."""
    beta: float = 0.1
    """Entropy bonus in curriculum learning (none in finetuning)."""
    entropy: EntropyBonus = "authors"
    """Form of the entropy bonus: "authors" (their script's -s' log s' over every block, which also
    pulls blocks toward being dropped) or "bernoulli" (the Bernoulli entropy of the decided blocks)."""
    curriculum_step: float = 1.0
    """Blocks handed to the policy per curriculum epoch (fractions allowed: 0.1 = one per 10 epochs)."""
    policy_input: int = 32
    """Image size the policy looks at: 32, or 16 / 8 for a cheaper policy on a downsampled image."""
    init: Path | None = None
    """Agent checkpoint to start from (e.g. a curriculum run for --stage finetune)."""
    depth: int = 32
    """Depth of the ResNet whose blocks are dropped: 32 (BlockDrop-CIFAR10-R32, 15 blocks) or 110
    (BlockDrop-CIFAR10-R110, 54 blocks); the policy decides one bit per block."""
    resnet_checkpoint: Path | None = None
    """ResNet to start from; default: the finetuned one in --init, else the shipped checkpoint of --depth."""
    out: Path = Path("runs/blockdrop/default")
    """Run folder: agent.pt, summary.json, tb/."""
    checkpoint_every: int = 10
    """Epochs between checkpoints (one is always written at the end)."""
    eval_every: int = 10
    """Epochs between walks of the greedy policy over --eval-split (one is always run at the end)."""
    train_split: Literal["train", "trainval"] = "train"
    """Images to train on: train (45,000; the validation images held out) or trainval (all 50,000,
    as the shipped ResNet-32 agents were trained)."""
    eval_split: Literal["val", "test"] = "val"
    """Split of the walks during training: val (choose epochs on it) or test."""
    stop_after: int | None = None
    """Stop this run after this many epochs (for time-boxed runs; --resume continues)."""
    resume: bool = False
    """Continue the run in --out exactly where its checkpoint left it."""
    overwrite: bool = False
    """Start a fresh run in an --out that already holds one, replacing its checkpoint."""
    limit: int | None = None
    """Use only the first N images of each split (smoke runs)."""
    seed: int = 0
    """Seed of the initialisation, the image draws, augmentation and action sampling."""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda."""


RESUME_MAY_CHANGE = (
    "resume overwrite stop_after checkpoint_every eval_every eval_split out device data_dir compile fused precision "
    "curriculum_epochs finetune_epochs"
).split()
"""Arguments a resumed run may change (see the module docstring)."""


def check_args(args: Args) -> None:
    """Refuse arguments that would fail later or train nothing, with what was expected."""
    require(args.curriculum_epochs >= 0 and args.finetune_epochs >= 0, "epoch counts must be >= 0")
    require(sum(e for _, e in stages(args)) > 0, f"--stage {args.stage} has no epochs to run: give it some")
    require_positive(args, "batch_size", "finetune_batch_size", "checkpoint_every", "eval_every", "stop_after", "limit")
    require_penalty(args, "penalty", "finetune_penalty")
    require(0.5 < args.alpha <= 1, f"--alpha must lie in (0.5, 1] (1: no exploration bound); got {args.alpha}")
    require(args.beta >= 0, f"--beta must be >= 0; got {args.beta}")
    require(args.lr > 0 and args.finetune_lr > 0, "learning rates must be > 0")
    require(0 <= args.lr_decay_at <= 1, f"--lr-decay-at must lie in [0, 1]; got {args.lr_decay_at}")
    require(args.curriculum_step > 0, f"--curriculum-step must be > 0; got {args.curriculum_step}")
    require(not (args.resume and args.overwrite), "pass --resume or --overwrite, not both")


def stages(args: Args) -> list[tuple[str, int]]:
    """(stage, epochs) in the order they run."""
    plan = {
        "both": [("curriculum", args.curriculum_epochs), ("finetune", args.finetune_epochs)],
        "curriculum": [("curriculum", args.curriculum_epochs)],
        "finetune": [("finetune", args.finetune_epochs)],
    }[args.stage]
    return [(name, epochs) for name, epochs in plan if epochs > 0]


def locate(epoch: int, plan: list[tuple[str, int]]) -> tuple[str, int, int]:
    """The stage of a global epoch, the epoch within that stage, and the stage's length."""
    for name, epochs in plan:
        if epoch < epochs:
            return name, epoch, epochs
        epoch -= epochs
    raise ValueError(f"epoch {epoch} lies past the plan {plan}")


def stage_policy(agent: BlockDropAgent, env: Any) -> Policy:
    """The greedy policy as the stage runs it: blocks the curriculum still forces on stay on (as
    the authors' test does), so mid-curriculum test figures measure what the policy decides."""
    forced = getattr(env, "forced", None)
    if forced is None:
        return agent.greedy
    return lambda images: agent.greedy(images) | forced


def epoch_stats(steps: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Per-epoch train figures from the steps' tensors; the one host sync of the epoch."""
    cat = {k: torch.cat([torch.atleast_1d(s[k]) for s in steps]) for k in steps[0]}
    blocks = cat["blocks_kept"].double()
    return {
        "accuracy": cat["correct"].double().mean().item(),
        "reward": cat["reward"].double().mean().item(),
        "reward_greedy": cat["reward_greedy"].double().mean().item(),
        "blocks_mean": blocks.mean().item(),
        "blocks_std": blocks.std(unbiased=False).item(),
        "unique_policies": len(torch.unique(cat["greedy"], dim=0)),
        "entropy": cat["entropy"].mean().item(),
        "loss": cat["loss"].mean().item(),
    }


def check_resume(args: Args, state: dict) -> None:
    """Refuse a resume whose arguments differ from the run's (see the module docstring)."""
    # Runs from before the validation split trained on all 50,000 images and walked the test split.
    saved = {"train_split": "trainval", "eval_split": "test", **state["args"]}
    differ = resume_mismatch(saved, asdict(args), RESUME_MAY_CHANGE)
    require(not differ, "--resume with arguments that differ from the run's: " + "; ".join(differ))
    plan, done = stages(args), state["epoch"]
    total = sum(e for _, e in plan)
    require(done < total, f"the run in {args.out} has run all {total} epochs: raise the epoch counts to go on")
    require(
        done == 0 or locate(done - 1, plan)[0] == state["stage"],
        f"the run's epoch {done} was a {state['stage']} epoch; these epoch counts would make it another stage",
    )


def main(args: Args) -> dict:
    check_args(args)
    check_device(args.device)
    ckpt_path = args.out / "agent.pt"
    check_writable(args.out)
    refuse_overwrite([ckpt_path], args.resume, args.overwrite)
    remove_stale_temporaries(ckpt_path)
    args.fetch_data()
    if args.resume and not ckpt_path.is_file():
        raise UsageError(f"--resume: no checkpoint at {ckpt_path}")
    state = load_checkpoint(ckpt_path, "policy", "BlockDrop agent checkpoint") if args.resume else None
    if state is not None:
        check_resume(args, state)
    require(args.policy_input in (8, 16, 32), f"--policy-input must be 32, 16 or 8; got {args.policy_input}")
    device = resolve_device(args.device)
    resnet, _ = load_resnet(args.resnet_checkpoint, depth=args.depth, device=device)
    # Seeded after building the ResNet (its init draws), so the policy's init depends on the seed alone.
    torch.manual_seed(args.seed)
    agent = BlockDropAgent(
        resnet.num_blocks, device, compile=args.compile, precision=args.precision, policy_input=args.policy_input
    )

    init = load_agent(args.init, device) if args.init is not None else None
    if init is not None:
        blocks = init.policy.num_blocks
        require(
            blocks == resnet.num_blocks,
            f"--init {args.init} decides {blocks} blocks; --depth {args.depth} has {resnet.num_blocks}",
        )
        size = init.policy.input_size
        looks = f"--init {args.init} looks at {size}x{size} images"
        require(size == args.policy_input, f"{looks}: give --policy-input {size}")
        agent.policy.load_state_dict(init.policy.state_dict())
        if init.resnet_state is not None and args.resnet_checkpoint is None:
            resnet.load_state_dict(init.resnet_state)
    if state is not None:
        agent.policy.load_state_dict(state["policy"])
        if state["resnet"] is not None:
            resnet.load_state_dict(state["resnet"])

    # Every env shares the one ResNet: finetuning changes what all of them score with.
    common = dict(
        device=device,
        data_dir=args.data_dir,
        checkpoint=resnet,
        limit=args.limit,
        **args.env_forward(),
    )
    eval_env = make_eval_env(args.eval_split, **common)
    plan = stages(args)
    total_epochs = sum(e for _, e in plan)
    envs = {}
    for name, _ in plan:
        batch = args.batch_size if name == "curriculum" else args.finetune_batch_size
        penalty = args.penalty if name == "curriculum" else args.finetune_penalty
        env = BlockDropVectorEnv(num_envs=batch, split=args.train_split, penalty=penalty, **common)
        env.reset(seed=args.seed + len(envs))
        envs[name] = CurriculumVectorWrapper(env) if name == "curriculum" else env
    generator = torch.Generator(device).manual_seed(args.seed)

    start_epoch = 0
    if state is not None:
        start_epoch = state["epoch"]
        generator.set_state(state["rng"]["sampling"])
        for name, env_state in state["envs"].items():
            if name in envs:
                envs[name].unwrapped.load_state_dict(env_state)

    writer = SummaryWriter(str(args.out / "tb"))
    stop_at = total_epochs if args.stop_after is None else min(total_epochs, start_epoch + args.stop_after)
    optimizer, current_stage, finetuned = None, None, state is not None and state["resnet"] is not None
    bar = tqdm(range(start_epoch, stop_at), desc="BlockDrop", unit="epoch")
    estimated: set[str] = set()  # stages whose cost was estimated (on the CPU, after their first steps)
    summary: dict = {}

    def checkpoint(epoch: int) -> None:
        save_agent(
            ckpt_path,
            agent,
            resnet=resnet if finetuned else None,
            epoch=epoch,
            stage=current_stage,
            optimizer=optimizer.state_dict(),
            args={k: str(v) for k, v in asdict(args).items()},
            rng={"sampling": generator.get_state()},
            envs={n: e.unwrapped.state_dict() for n, e in envs.items()},
            **run_metadata(),
        )

    for epoch in bar:
        name, stage_epoch, stage_epochs = locate(epoch, plan)
        env = envs[name]
        if name != current_stage:
            config = ReinforceConfig(
                lr=args.lr if name == "curriculum" else args.finetune_lr,
                alpha=args.alpha,
                beta=args.beta if name == "curriculum" else 0.0,
                entropy=args.entropy,
                finetune=name == "finetune",
                finetune_bn=args.finetune_bn,
            )
            optimizer = make_optimizer(agent, env, config)
            eval_env.task.penalty = env.unwrapped.task.penalty  # walk rewards on the stage's terms
            if state is not None and state["stage"] == name and state["epoch"] == epoch:
                optimizer.load_state_dict(state["optimizer"])
            current_stage, finetuned = name, finetuned or name == "finetune"
        if name == "curriculum":
            env.decided = curriculum_decided(stage_epoch, env.unwrapped.num_blocks, args.curriculum_step)
        else:
            decay = stage_epoch >= args.lr_decay_at * stage_epochs
            for group in optimizer.param_groups:
                group["lr"] = args.finetune_lr * (0.1 if decay else 1.0)

        steps = math.ceil(env.unwrapped.task.num_images / env.num_envs)
        step_stats = []
        for i in range(steps):
            if i == 1:
                started = perf_counter()
            step_stats.append(train_step(agent, env, optimizer, config, generator))
            if i == 3 and name not in estimated and device.type == "cpu":  # CUDA steps run ahead of the host
                estimated.add(name)
                epochs_left = min(stage_epochs - stage_epoch, stop_at - epoch)
                cost_note(
                    (perf_counter() - started) / 3 * steps * epochs_left,
                    f"this run's {epochs_left} {name} epochs of {steps} steps",
                    f"ask for less with --{name}-epochs, --limit or --stop-after (--resume continues later)",
                )
        stats = epoch_stats(step_stats)
        stats["decided"] = env.decided if name == "curriculum" else env.unwrapped.num_blocks
        for key, value in stats.items():
            writer.add_scalar(f"train/{key}", value, epoch + 1)
        bar.set_postfix(
            stage=name,
            reward=f"{stats['reward']:.3f}",
            acc=f"{stats['accuracy']:.3f}",
            blocks=f"{stats['blocks_mean']:.1f}",
        )

        last = epoch + 1 == stop_at
        if (epoch + 1) % args.eval_every == 0 or last:
            ev = evaluate(eval_env, stage_policy(agent, env), agent.policy.flops()).summary()
            for key, value in ev.items():
                writer.add_scalar(f"{args.eval_split}/{key}", value, epoch + 1)
            tqdm.write(
                f"epoch {epoch + 1} [{name}] train reward {stats['reward']:.4f} acc {stats['accuracy']:.4f} "
                f"blocks {stats['blocks_mean']:.2f} | {args.eval_split} acc {ev['accuracy']:.4f} "
                f"blocks {ev['blocks_mean']:.2f} +- {ev['blocks_std']:.2f} unique {ev['unique_policies']}"
            )
            summary = {"epoch": epoch + 1, "stage": name, "train": stats, args.eval_split: ev}
        if (epoch + 1) % args.checkpoint_every == 0 or last:
            checkpoint(epoch + 1)
    writer.close()
    if summary:
        (args.out / "summary.json").write_text(json.dumps({**summary, **run_metadata()}, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    run(main, Args, "experiments.train_blockdrop", __doc__)
