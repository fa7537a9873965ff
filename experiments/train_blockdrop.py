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
ResNet, epoch and the states of every random generator. ``<out>/best.pt`` keeps the agent (policy,
and the ResNet when it is not the shipped one: finetuned, or from ``--init`` or
``--resnet-checkpoint``) of the validation walk with the highest mean reward in the stage under way,
counting only walks where the policy decides every block (a curriculum's last stages, finetuning):
evaluate or ship it when a later epoch scored lower. TensorBoard logs go to ``<out>/tb``.

A fresh run refuses an ``--out`` that already holds one (``--resume`` continues it, ``--overwrite``
starts over). ``--resume`` refuses arguments that differ from the run's, naming each, except those
that do not change what was trained: ``--stop-after``, ``--checkpoint-every``, ``--eval-every``,
``--out``, ``--device``, ``--data-dir``, ``--compile``, ``--fused``, ``--precision``, and the epoch
counts, which may grow or shrink as long as the epochs already run keep their stage (a run is
extended by raising them). What a resumed run used is what its checkpoint records, with where each
session began and in which dtype it trained (``sessions``: a run moved to a CPU without native bf16
goes on in fp32 under ``--precision auto``, and says so).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from time import perf_counter
from typing import Any, Literal

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from agents.baselines import FixedBlocks
from agents.evaluation import Policy, evaluate, make_eval_env
from agents.pretrained import policy_path
from agents.reinforce import (
    BlockDropAgent,
    EntropyBonus,
    FinetuneBatchNorm,
    FinetuneForward,
    FinetuneTarget,
    JointOptimizer,
    ReinforceConfig,
    ResNetOptimizer,
    load_agent,
    make_optimizer,
    save_agent,
    train_step,
)
from blockdrop_env.checkpoint import atomic_write_text, load_checkpoint, load_resnet, run_metadata
from blockdrop_env.device import resolve_device, training_dtype
from blockdrop_env.vector_env import BlockDropVectorEnv
from blockdrop_env.wrappers import CurriculumVectorWrapper, curriculum_decided
from experiments.cli import (
    DataArgs,
    Interrupted,
    InterruptFlag,
    UsageError,
    add_session,
    check_device,
    check_writable,
    continue_with,
    cost_note,
    flag,
    lock_folder,
    refuse_overwrite,
    remove_stale_temporaries,
    require,
    require_blocks,
    require_finite,
    require_penalty,
    require_positive,
    require_seed,
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
    """Adam learning rate in finetuning: the policy's, and the ResNet's under the default optimiser."""
    finetune_resnet_optimizer: ResNetOptimizer = "adam"
    """Optimiser of the ResNet in finetuning: adam (the policy's, as the authors' finetune.py) or sgd
    (Nesterov momentum 0.9, weight decay 5e-4: the recipe the ResNets were pretrained with)."""
    finetune_resnet_lr: float | None = None
    """Learning rate of the ResNet in finetuning; default: --finetune-lr under adam, 0.01 under sgd."""
    lr_decay_at: float = 0.8
    """Fraction of the finetuning epochs after which its learning rates are divided by 10."""
    penalty: float = -1.0
    """Reward of a wrong prediction in curriculum learning."""
    finetune_penalty: float = -2.0
    """Reward of a wrong prediction in finetuning: -2, where the shipped ResNet-32 agents did best
    (docs/RESULTS.md); the paper's ResNet-110 run used -10 (``--finetune-penalty -10``)."""
    finetune_bn: FinetuneBatchNorm = "train"
    """Batch norm of the ResNet in finetuning: frozen (eval mode, the pretrained statistics), or train
    as the authors' finetune.py (batch statistics in training steps, running averages updated)."""
    finetune_forward: FinetuneForward = "masked"
    """ResNet forward in finetuning: masked (every block computed, the dropped ones masked out, as the
    authors' finetune.py) or kept (each block runs on the images that keep it alone; less work, and
    batch statistics from those images)."""
    finetune_target: FinetuneTarget = "sampled"
    """Action whose ResNet forward the cross-entropy trains in finetuning: sampled (the explored
    action, as the authors' finetune.py), greedy (the action the agent deploys) or both (the mean)."""
    alpha: float = 0.8
    """Bound of the exploration probabilities, in (0.5, 1] (1: no bound)."""
    beta: float = 0.1
    """Entropy bonus in curriculum learning (none in finetuning)."""
    entropy: EntropyBonus = "authors"
    """Form of the entropy bonus: "authors" (their script's -s' log s' over every block, which also
    pulls blocks toward being dropped) or "bernoulli" (the Bernoulli entropy of the decided blocks)."""
    curriculum_step: float = 1.0
    """Blocks handed to the policy per curriculum epoch (fractions allowed: 0.1 = one per 10 epochs)."""
    policy_input: int = 32
    """Image size the policy looks at: 32, or 16 / 8 for a cheaper policy on a downsampled image."""
    init: str | None = None
    """Agent to start from: a checkpoint (e.g. a curriculum run's agent.pt for --stage finetune) or a
    shipped agent's name (``python -m experiments.evaluate --list-policies``)."""
    init_blocks: tuple[int, ...] = ()
    """Start the policy as one block set for every image instead (0-based blocks, e.g. a pruned
    ResNet's --keep-blocks, with that network as --resnet-checkpoint): keep probability 0.9 for these
    blocks and 0.1 for the others, whatever the image; training learns per-image departures from it.
    With --init, the policy's trunk (the image features it decides from) comes from that agent and
    only its keep head starts as the set."""
    depth: int = 32
    """Depth of the ResNet whose blocks are dropped: 32 (BlockDrop-CIFAR10-R32, 15 blocks) or 110
    (BlockDrop-CIFAR10-R110, 54 blocks); the policy decides one bit per block."""
    resnet_checkpoint: Path | None = None
    """ResNet to start from; default: the finetuned one in --init, else the shipped checkpoint of --depth."""
    out: Path = Path("runs/blockdrop/default")
    """Run folder: agent.pt (resume state), best.pt (best validation walk), summary.json, tb/."""
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
    """Stop after this many more epochs, counted from where this invocation starts (for time-boxed
    runs; --resume continues)."""
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
    require_finite(args, "lr", "finetune_lr", "alpha", "beta", "curriculum_step", "lr_decay_at")
    require_seed("seed", args.seed)
    require(args.lr > 0 and args.finetune_lr > 0, "learning rates must be > 0")
    resnet_lr = args.finetune_resnet_lr
    require(
        resnet_lr is None or (math.isfinite(resnet_lr) and resnet_lr > 0),
        f"--finetune-resnet-lr must be a finite number > 0; got {resnet_lr}",
    )
    require(0 <= args.lr_decay_at <= 1, f"--lr-decay-at must lie in [0, 1]; got {args.lr_decay_at}")
    require(args.curriculum_step > 0, f"--curriculum-step must be > 0; got {args.curriculum_step}")
    require(not (args.resume and args.overwrite), "pass --resume or --overwrite, not both")
    if args.init_blocks:
        require_blocks(args, "init_blocks", args.depth)
    for name in ("curriculum", "finetune"):  # the config's own bounds (alpha, beta), whichever stages run
        try:
            stage_config(args, name)
        except ValueError as error:
            setting, says = str(error).split(" ", 1)
            raise UsageError(f"{flag(setting)} {says}") from None


def stages(args: Args) -> list[tuple[str, int]]:
    """(stage, epochs) in the order they run."""
    plan = {
        "both": [("curriculum", args.curriculum_epochs), ("finetune", args.finetune_epochs)],
        "curriculum": [("curriculum", args.curriculum_epochs)],
        "finetune": [("finetune", args.finetune_epochs)],
    }[args.stage]
    return [(name, epochs) for name, epochs in plan if epochs > 0]


def stage_config(args: Args, name: str) -> ReinforceConfig:
    """The REINFORCE hyper-parameters of a stage ("curriculum" or "finetune")."""
    return ReinforceConfig(
        lr=args.lr if name == "curriculum" else args.finetune_lr,
        alpha=args.alpha,
        beta=args.beta if name == "curriculum" else 0.0,
        entropy=args.entropy,
        finetune=name == "finetune",
        finetune_bn=args.finetune_bn,
        finetune_forward=args.finetune_forward,
        finetune_target=args.finetune_target,
        resnet_optimizer=args.finetune_resnet_optimizer,
        resnet_lr=args.finetune_resnet_lr,
    )


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


def walk_decides_all(env: Any) -> bool:
    """Whether the stage's policy decides every block (no curriculum forcing the first ones on)."""
    return getattr(env, "decided", None) in (None, env.unwrapped.num_blocks)


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


CURRICULUM_ONLY = ("batch_size", "lr", "penalty", "beta", "entropy", "curriculum_step")
FINETUNE_ONLY = (
    "finetune_batch_size",
    "finetune_lr",
    "lr_decay_at",
    "finetune_penalty",
    "finetune_bn",
    "finetune_forward",
    "finetune_target",
    "finetune_resnet_optimizer",
    "finetune_resnet_lr",
)


def unused_by_plan(args: Args) -> list[str]:
    """Arguments of a stage the run does not have: they change nothing it trains (a curriculum-only
    run resumes under new finetuning defaults)."""
    names = [name for name, _ in stages(args)]
    return [*(() if "curriculum" in names else CURRICULUM_ONLY), *(() if "finetune" in names else FINETUNE_ONLY)]


def check_resume(args: Args, state: dict) -> None:
    """Refuse a resume whose arguments differ from the run's (see the module docstring)."""
    # Runs from before the validation split trained on all 50,000 images and walked the test split.
    # Runs from before --finetune-forward computed every block (masked); from before
    # --finetune-target trained the ResNet under the sampled action; from before
    # --finetune-resnet-optimizer, in the policy's Adam; from before --init-blocks, not from a block set.
    older = dict(
        train_split="trainval",
        eval_split="test",
        finetune_forward="masked",
        finetune_target="sampled",
        finetune_resnet_optimizer="adam",
        finetune_resnet_lr="None",  # saved arguments are strings
        init_blocks="()",
    )
    saved = {**older, **state["args"]}
    differ = resume_mismatch(saved, asdict(args), RESUME_MAY_CHANGE + unused_by_plan(args))
    require(not differ, "--resume with arguments that differ from the run's: " + "; ".join(differ))
    plan, done = stages(args), state["epoch"]
    total = sum(e for _, e in plan)
    require(done < total, f"the run in {args.out} has run all {total} epochs: raise the epoch counts to go on")
    # Every epoch already run (and one an interrupt left half done) must keep the stage it ran in.
    ran = done + (1 if state.get("step", 0) else 0)
    before = stages(
        replace(args, **{k: type(getattr(args, k))(saved[k]) for k in ("curriculum_epochs", "finetune_epochs")})
    )
    moved = next((e for e in range(ran) if locate(e, plan)[0] != locate(e, before)[0]), None)
    require(
        moved is None,
        f"the run's epoch {0 if moved is None else moved + 1} was a {locate(moved or 0, before)[0]} epoch; "
        "these epoch counts would make it another stage (grow only the stage the run is in, or the ones after it)",
    )


@dataclass
class Training:
    """What a run holds between steps; what a resume state saves (``checkpoint``)."""

    args: Args
    agent: BlockDropAgent
    resnet: torch.nn.Module
    envs: dict[str, Any]
    eval_env: BlockDropVectorEnv
    generator: torch.Generator
    epoch: int = 0
    """Epochs completed (the epoch under way, counted from 0)."""
    step: int = 0
    """Steps of the epoch under way completed (non-zero only in a state saved by an interrupt)."""
    step_stats: list = field(default_factory=list)
    """The statistics of those steps."""
    stage: str | None = None
    optimizer: torch.optim.Optimizer | JointOptimizer | None = None
    config: ReinforceConfig | None = None
    finetuned: bool = False
    own_resnet: bool = False
    """The ResNet is not the shipped checkpoint of --depth (it came from --init or
    --resnet-checkpoint): every saved agent carries it, as a finetuned one does, so that the agent
    is evaluated with the ResNet it was trained on."""
    best: dict | None = None
    """The walk behind ``best.pt``: its epoch, stage and validation summary (None before one)."""
    sessions: list = field(default_factory=list)
    """Where each session of the run began, and its machine and training dtype (``add_session``)."""

    @property
    def path(self) -> Path:
        return self.args.out / "agent.pt"

    @property
    def best_path(self) -> Path:
        return self.args.out / "best.pt"

    def keep_if_best(self, epoch: int, stage: str, walk: dict) -> bool:
        """Save the agent as ``best.pt`` when a validation walk of a policy that decides every block
        beats the stage's best mean reward so far (rewards of two stages differ in penalty and
        ResNet, so a new stage starts afresh). True when it was saved."""
        if self.args.eval_split != "val" or not walk_decides_all(self.envs[stage]):
            return False
        if self.best is not None and self.best["stage"] == stage and walk["reward_mean"] <= self.best["reward_mean"]:
            return False
        self.best = {"epoch": epoch, "stage": stage, **walk}
        self.save(self.best_path, epoch=epoch, stage=stage, best=self.best)
        return True

    def checkpoint(self) -> None:
        self.save(
            self.path,
            epoch=self.epoch,
            step=self.step,
            step_stats=[{k: v.cpu() for k, v in s.items()} for s in self.step_stats],
            stage=self.stage,
            optimizer=self.optimizer.state_dict(),
            rng={"sampling": self.generator.get_state()},
            envs={n: e.unwrapped.state_dict() for n, e in self.envs.items()},
        )

    def save(self, path: Path, **state: Any) -> None:
        """The agent (and the ResNet once finetuning began) with the run's arguments and ``state``."""
        save_agent(
            path,
            self.agent,
            resnet=self.resnet if self.finetuned or self.own_resnet else None,
            args={k: str(v) for k, v in asdict(self.args).items()},
            sessions=self.sessions,
            **state,
            **run_metadata(),
        )


def open_output(args: Args) -> dict | None:
    """Lock ``--out``, check what it holds against the arguments, and return the resume state
    (None for a fresh run). Nothing in the folder is touched before its lock is held."""
    path, best = args.out / "agent.pt", args.out / "best.pt"
    check_writable(args.out)
    lock_folder(args.out)
    refuse_overwrite([path, best], args.resume, args.overwrite)
    for saved in (path, best):
        remove_stale_temporaries(saved)
    if args.resume and not path.is_file():
        raise UsageError(f"--resume: no checkpoint at {path}")
    state = load_checkpoint(path, "policy", "BlockDrop agent checkpoint") if args.resume else None
    if state is not None:
        check_resume(args, state)
        # best.pt is the record: it may be newer than the resume state (a walk after its last save).
        state["best"] = load_checkpoint(best, "best", "best-agent checkpoint")["best"] if best.is_file() else None
    elif best.is_file():
        best.unlink()  # --overwrite: the replaced run's best agent goes with it
    return state


def build(args: Args, state: dict | None) -> Training:
    """The agent, the ResNet (from --init or the resume state), the envs and the generator,
    restored from ``state`` when resuming."""
    device = resolve_device(args.device)
    resnet, _ = load_resnet(args.resnet_checkpoint, depth=args.depth, device=device)
    own_resnet = args.resnet_checkpoint is not None
    # Seeded after building the ResNet (its init draws), so the policy's init depends on the seed alone.
    torch.manual_seed(args.seed)
    agent = BlockDropAgent(
        resnet.num_blocks, device, compile=args.compile, precision=args.precision, policy_input=args.policy_input
    )
    if args.init is not None:
        init = load_agent(policy_path(args.init), device)
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
            own_resnet = True
    if args.init_blocks:
        agent.policy.start_as(FixedBlocks(args.init_blocks, resnet.num_blocks).mask(device))
    if state is not None:
        agent.policy.load_state_dict(state["policy"])
        if state["resnet"] is not None:
            resnet.load_state_dict(state["resnet"])

    # Every env shares the one ResNet: finetuning changes what all of them score with.
    common = dict(device=device, data_dir=args.data_dir, checkpoint=resnet, limit=args.limit, **args.env_forward())
    envs = {}
    for name, _ in stages(args):
        batch = args.batch_size if name == "curriculum" else args.finetune_batch_size
        penalty = args.penalty if name == "curriculum" else args.finetune_penalty
        env = BlockDropVectorEnv(num_envs=batch, split=args.train_split, penalty=penalty, **common)
        env.reset(seed=args.seed + len(envs))
        envs[name] = CurriculumVectorWrapper(env) if name == "curriculum" else env
    eval_env = make_eval_env(args.eval_split, **common)
    job = Training(args, agent, resnet, envs, eval_env, torch.Generator(device), own_resnet=own_resnet)
    job.generator.manual_seed(args.seed)
    if state is not None:
        job.epoch, job.step = state["epoch"], state.get("step", 0)
        job.step_stats = [{k: v.to(device) for k, v in s.items()} for s in state.get("step_stats", [])]
        job.finetuned = state["resnet"] is not None
        job.generator.set_state(state["rng"]["sampling"])
        job.best = state["best"]
        for name, env_state in state["envs"].items():
            if name in envs:
                envs[name].unwrapped.load_state_dict(env_state)
    dtype = training_dtype(device, args.precision)
    job.sessions = add_session(state and state.get("sessions"), job.epoch, job.step, dtype)
    return job


def enter_stage(job: Training, name: str, state: dict | None) -> None:
    """Start a stage: its hyper-parameters and a fresh optimiser (the saved one when resuming in it)."""
    args, env = job.args, job.envs[name]
    job.config = stage_config(args, name)
    job.optimizer = make_optimizer(job.agent, env, job.config)
    job.eval_env.task.penalty = env.unwrapped.task.penalty  # walk rewards on the stage's terms
    if state is not None and state["stage"] == name and state["epoch"] == job.epoch:
        job.optimizer.load_state_dict(state["optimizer"])
    job.stage, job.finetuned = name, job.finetuned or name == "finetune"


def set_schedule(job: Training, stage_epoch: int, stage_epochs: int) -> None:
    """The epoch's curriculum stage (blocks the policy decides) or finetuning learning rate."""
    env = job.envs[job.stage]
    if job.stage == "curriculum":
        env.decided = curriculum_decided(stage_epoch, env.unwrapped.num_blocks, job.args.curriculum_step)
    else:
        decay = stage_epoch >= job.args.lr_decay_at * stage_epochs
        for group in job.optimizer.param_groups:  # resume states from before base_lr: one group
            group["lr"] = group.get("base_lr", job.args.finetune_lr) * (0.1 if decay else 1.0)


def train_epoch(job: Training, stop: InterruptFlag, estimate: Callable[[float, int], None]) -> bool:
    """Run the epoch's remaining steps; False when an interrupt stopped it part-way (``job.step``
    then says how far it got). ``estimate`` gets the seconds of steps 1-3 and the epoch's step count."""
    env = job.envs[job.stage]
    steps = math.ceil(env.unwrapped.task.num_images / env.num_envs)
    first = job.step
    for i in range(first, steps):
        if i == first + 1:
            started = perf_counter()
        try:
            job.step_stats.append(train_step(job.agent, env, job.optimizer, job.config, job.generator))
        except RuntimeError:  # NaN keep probabilities fail the sampling
            if finite_weights(job):
                raise
            raise diverged(job, "non-finite weights") from None
        job.step = i + 1
        if i == first + 3:
            estimate((perf_counter() - started) / 3, steps)
        if stop.requested and job.step < steps:
            return False
    return True


def finite_weights(job: Training) -> bool:
    params = list(job.agent.policy.parameters()) + (list(job.resnet.parameters()) if job.finetuned else [])
    return all(bool(torch.isfinite(p).all()) for p in params)


def diverged(job: Training, what: str) -> UsageError:
    """The error that stops a run whose loss or weights went non-finite; its resume state on disk is
    the last good one (nothing of the diverged epoch is saved)."""
    return UsageError(
        f"training diverged in epoch {job.epoch + 1} ({what}): nothing saved from it; {job.path} keeps the last "
        "good state. Lower the learning rate (--lr / --finetune-lr / --finetune-resnet-lr)"
    )


def main(args: Args) -> dict:
    check_args(args)
    check_device(args.device)
    require(args.policy_input in (8, 16, 32), f"--policy-input must be 32, 16 or 8; got {args.policy_input}")
    if args.init is not None:
        policy_path(args.init)  # a missing file or unknown name fails before any work
    state = open_output(args)
    args.fetch_data()
    job = build(args, state)
    plan = stages(args)
    total_epochs = sum(e for _, e in plan)
    stop_at = total_epochs if args.stop_after is None else min(total_epochs, job.epoch + args.stop_after)
    writer = SummaryWriter(str(args.out / "tb"))
    bar = tqdm(range(job.epoch, stop_at), desc="BlockDrop", unit="epoch")
    estimated: set[str] = set()  # stages whose cost was estimated (on the CPU, after their first steps)
    summary: dict = {}
    how_to_continue = continue_with("experiments.train_blockdrop", args.out)

    def estimate(seconds_per_step: float, steps: int) -> None:
        if job.stage in estimated or job.agent.device.type != "cpu":  # CUDA steps run ahead of the host
            return
        estimated.add(job.stage)
        _, stage_epoch, stage_epochs = locate(job.epoch, plan)
        epochs_left = min(stage_epochs - stage_epoch, stop_at - job.epoch)
        cost_note(
            seconds_per_step * steps * epochs_left,
            f"this run's {epochs_left} {job.stage} epochs of {steps} steps",
            f"ask for less with --{job.stage}-epochs, --limit or --stop-after (--resume continues later)",
        )

    with InterruptFlag() as stop:
        for epoch in bar:
            name, stage_epoch, stage_epochs = locate(epoch, plan)
            if name != job.stage or job.optimizer is None:
                enter_stage(job, name, state)
            set_schedule(job, stage_epoch, stage_epochs)
            if not train_epoch(job, stop, estimate):
                job.checkpoint()
                writer.close()
                raise Interrupted(
                    f"interrupted in epoch {epoch + 1} after {job.step} steps; resume state saved in {job.path}. "
                    + how_to_continue
                )
            stats = epoch_stats(job.step_stats)
            if not (math.isfinite(stats["loss"]) and finite_weights(job)):
                raise diverged(job, f"loss {stats['loss']}, or non-finite weights")
            job.epoch, job.step, job.step_stats = epoch + 1, 0, []
            env = job.envs[name]
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
                ev = evaluate(job.eval_env, stage_policy(job.agent, env), job.agent.policy.flops()).summary()
                for key, value in ev.items():
                    writer.add_scalar(f"{args.eval_split}/{key}", value, epoch + 1)
                tqdm.write(
                    f"epoch {epoch + 1} [{name}] train reward {stats['reward']:.4f} acc {stats['accuracy']:.4f} "
                    f"blocks {stats['blocks_mean']:.2f} | {args.eval_split} acc {ev['accuracy']:.4f} "
                    f"blocks {ev['blocks_mean']:.2f} +- {ev['blocks_std']:.2f} unique {ev['unique_policies']}"
                )
                if job.keep_if_best(epoch + 1, name, ev):
                    tqdm.write(f"epoch {epoch + 1}: the best {name} walk so far, saved in {job.best_path}")
                summary = {"epoch": epoch + 1, "stage": name, "train": stats, args.eval_split: ev}
            if (epoch + 1) % args.checkpoint_every == 0 or last or stop.requested:
                job.checkpoint()
            if stop.requested and not last:
                writer.close()
                raise Interrupted(
                    f"interrupted after epoch {epoch + 1}; resume state saved in {job.path}. " + how_to_continue
                )
    writer.close()
    if summary:
        summary["best"] = job.best
        summary["sessions"] = job.sessions
        atomic_write_text(args.out / "summary.json", json.dumps({**summary, **run_metadata()}, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    run(main, Args, "experiments.train_blockdrop", __doc__)
