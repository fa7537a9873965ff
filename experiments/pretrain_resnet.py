"""Pretrain the CIFAR ResNet whose predictions give BlockDrop its reward.

Data and augmentation stay on the device, bf16 autocast on CUDA and on CPUs with native bf16
(``--precision fp32`` to train in fp32), SGD with Nesterov momentum under
a one-cycle schedule. The checkpoint is written atomically with its metadata; a resume file is
written every epoch so that a killed run continues with ``--resume``. Ctrl-C or SIGTERM saves the
resume file after the step under way (mid-epoch too) and exits with one line saying how to
continue; the continued run ends as an uninterrupted one. The folder of ``--out`` is locked while
the run lasts: a second pretraining into it is refused.

    python -m experiments.pretrain_resnet --epochs 80 --out runs/pretrain/resnet32_cifar10.pt

The same loop finetunes a pretrained network pruned to one block set for every image (the static
rival of a BlockDrop agent that keeps as many blocks; ``evaluate --landscape`` ranks the blocks):

    python -m experiments.pretrain_resnet --depth 110 --init blockdrop_env/checkpoints/resnet110_cifar10.pt \
        --keep-blocks 0 1 2 ... --train-split train --epochs 3 --lr 0.02 --out runs/pruned/r110-k20.pt

A fresh run refuses an ``--out`` whose checkpoint or resume file exists (``--resume`` continues,
``--overwrite`` starts over); ``--resume`` refuses arguments that change what is trained (all but
``--out``, ``--logdir``, ``--device``, ``--data-dir``, ``--download``; the one-cycle schedule is
fixed by ``--epochs`` at the start), naming each. The checkpoint's ``sessions`` say where each
session of a resumed run began and in which dtype it trained (a run moved to a CPU without native
bf16 goes on in fp32 under ``--precision auto``, and says so).
"""

from __future__ import annotations

import datetime
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from agents.baselines import FixedBlocks
from blockdrop_env.checkpoint import atomic_save, load_checkpoint, load_resnet, run_metadata, save_resnet
from blockdrop_env.data import LAYOUTS, load_cifar, random_crop_flip
from blockdrop_env.device import Precision, autocast, resolve_device, training_dtype
from blockdrop_env.resnet import CifarResNet, predict
from experiments.cli import (
    DataArgs,
    Interrupted,
    InterruptFlag,
    UsageError,
    add_session,
    check_device,
    check_writable_file,
    continue_with,
    lock_folder,
    refuse_overwrite,
    remove_stale_temporaries,
    require,
    require_blocks,
    require_choice,
    require_finite,
    require_positive,
    require_seed,
    resume_mismatch,
    run,
)


@dataclass
class Args(DataArgs):
    depth: int = 32
    """ResNet depth, 6n+2 (32 for the env's ResNet-32)."""
    dataset: str = "cifar10"
    """cifar10 or cifar100."""
    epochs: int = 80
    """Passes over the training split."""
    batch_size: int = 512
    """Images per SGD step."""
    lr: float = 0.2
    """Peak learning rate of the one-cycle schedule."""
    momentum: float = 0.9
    """Nesterov momentum."""
    weight_decay: float = 5e-4
    """L2 weight decay."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing."""
    seed: int = 0
    """Seed of the initialisation, shuffling and augmentation."""
    init: Path | None = None
    """Start from this ResNet checkpoint of --depth (e.g. the shipped one) instead of a random
    initialisation: finetuning it (with a smaller --lr)."""
    keep_blocks: tuple[int, ...] = ()
    """Prune: run only these blocks (0-based, as in the drop landscape) for every image, in training
    and in the test; the others are never run, so their weights stay as they were. Empty: every block."""
    train_split: Literal["trainval", "train"] = "trainval"
    """trainval: all 50,000 train images (as He et al.); train: the 45,000 the agents train on,
    without the validation split, whose accuracy is then reported too."""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda."""
    precision: Precision = "auto"
    """auto: bf16 autocast where the device has it natively (CUDA; CPUs with AVX-512-BF16 or AMX),
    fp32 weights and optimiser state; fp32: fp32 throughout."""
    limit: int | None = None
    """Use only the first N train and N test images (smoke runs)."""
    out: Path = Path("runs/pretrain/resnet32_cifar10.pt")
    """Checkpoint to write; a resume file and a JSON summary are written beside it."""
    logdir: Path | None = None
    """TensorBoard folder; default: beside the checkpoint."""
    resume: bool = False
    """Continue from the resume file beside ``out``."""
    overwrite: bool = False
    """Start a fresh run where a checkpoint or resume file exists, replacing them."""


RESUME_MAY_CHANGE = ("resume", "overwrite", "out", "logdir", "device", "data_dir", "download")
"""Arguments a resumed run may change: they do not change what is trained."""


def check_args(args: Args) -> None:
    """Refuse arguments that would fail later, with what was expected."""
    require_choice(args, "dataset", LAYOUTS)
    require(args.depth >= 8 and (args.depth - 2) % 6 == 0, f"--depth must be 6n+2 (20, 32, 110, ...); got {args.depth}")
    require_positive(args, "epochs", "batch_size", "limit")
    require_finite(args, "lr", "momentum", "weight_decay", "label_smoothing")
    require(args.lr > 0, f"--lr must be > 0; got {args.lr}")
    require(0 <= args.momentum < 1, f"--momentum must lie in [0, 1); got {args.momentum}")
    require(args.weight_decay >= 0, f"--weight-decay must be >= 0; got {args.weight_decay}")
    require(0 <= args.label_smoothing < 1, f"--label-smoothing must lie in [0, 1); got {args.label_smoothing}")
    require_seed("seed", args.seed)
    require(not (args.resume and args.overwrite), "pass --resume or --overwrite, not both")
    if args.keep_blocks:
        require_blocks(args, "keep_blocks", args.depth)


def sgd_step(
    model: CifarResNet,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    precision: Precision = "auto",
    label_smoothing: float = 0.0,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on the cross-entropy of a batch (uint8 images), under the device's
    training autocast; returns the logits and the loss, detached. ``keep`` (num_blocks,): the one
    block set every image runs (None: every block)."""
    device = images.device
    with autocast(device, precision):
        logits = pruned_forward(model, images.contiguous(memory_format=torch.channels_last), keep)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return logits.detach(), loss.detach()


def pruned_forward(model: CifarResNet, images: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Logits with every image running the blocks of ``keep`` (num_blocks,) alone: a dropped block
    is skipped outright (gathered over no image), not computed and masked."""
    if keep is None:
        return model(images)
    return model(images, keep.expand(len(images), -1), gather_below=1.0)


@torch.no_grad()
def accuracy(model: CifarResNet, images: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor | None) -> float:
    """Accuracy of the network (eval mode, fp32) running the blocks of ``keep`` on every image."""
    model.eval()
    mask = None if keep is None else keep.cpu().expand(len(images), -1)
    return (predict(model, images, mask, gather_below=1.0).cpu() == labels).float().mean().item()  # dropped: skipped


def main(args: Args) -> dict:
    meta = run_metadata()  # at the start: the commit and command that ran
    check_args(args)
    check_device(args.device)
    resume_path = args.out.with_suffix(".resume.pt")
    check_writable_file(args.out)
    refuse_overwrite([args.out, resume_path], args.resume, args.overwrite)
    lock_folder(args.out.parent)  # temporaries are cleaned up only under the lock
    for path in (args.out, resume_path):
        remove_stale_temporaries(path)
    state = None
    if args.resume:
        require(resume_path.is_file(), f"--resume: no resume file at {resume_path}")
        state = load_checkpoint(resume_path, "model", "pretraining resume file")
        differ = resume_mismatch(state["args"], asdict(args), RESUME_MAY_CHANGE)
        require(not differ, "--resume with arguments that differ from the run's: " + "; ".join(differ))
    device = resolve_device(args.device)
    if device.type == "cuda":  # fixed shapes (the ragged batch is dropped): cuDNN picks its fastest kernels once
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    num_classes = LAYOUTS[args.dataset].num_classes
    if args.init is None:
        model = CifarResNet(args.depth, num_classes)
    else:
        model, init_meta = load_resnet(args.init, args.depth, num_classes)
        require(
            not init_meta.get("keep_blocks") or args.keep_blocks,
            f"--init {args.init} is pruned to blocks {init_meta.get('keep_blocks')}: pass them as --keep-blocks",
        )
    model = model.to(device).to(memory_format=torch.channels_last)
    keep = FixedBlocks(args.keep_blocks, model.num_blocks).mask(device) if args.keep_blocks else None

    # trainval: all 50,000 train images, as He et al. (the agents' validation split is part of them).
    train_x, train_y = load_cifar(args.train_split, args.data_dir, args.dataset, args.download)
    test_x, test_y = load_cifar("test", args.data_dir, args.dataset, args.download)
    val = load_cifar("val", args.data_dir, args.dataset, args.download) if args.train_split == "train" else None
    if args.limit is not None:
        train_x, train_y = train_x[: args.limit], train_y[: args.limit]
        test_x, test_y = test_x[: args.limit], test_y[: args.limit]
        val = None if val is None else (val[0][: args.limit], val[1][: args.limit])
    train_x, train_y = train_x.to(device), train_y.to(device)  # resident on the device

    batch_size = min(args.batch_size, len(train_x))
    steps_per_epoch = len(train_x) // batch_size  # drop the ragged batch: fixed shapes
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        nesterov=True,
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch
    )
    generator = torch.Generator(device).manual_seed(args.seed)

    start_epoch, start_step, elapsed, order, sums = 0, 0, 0.0, None, None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        start_epoch, elapsed = state["epoch"], state["elapsed"]
        if state.get("step", 0):  # saved by an interrupt part-way through an epoch
            start_step, order = state["step"], state["order"].to(device)
            sums = [t.to(device) for t in state["sums"]]
    sessions = add_session(
        state and state.get("sessions"), start_epoch, start_step, training_dtype(device, args.precision)
    )

    def save_resume(epoch: int, step: int = 0, order: torch.Tensor | None = None, sums: list | None = None) -> None:
        """The resume file: ``epoch`` epochs done, and ``step`` steps of the next (its image order and
        running sums, so that it goes on exactly)."""
        atomic_save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "epoch": epoch,
                "step": step,
                **({"order": order.cpu(), "sums": [t.cpu() for t in sums]} if step else {}),
                "elapsed": elapsed,
                "args": {k: str(v) for k, v in asdict(args).items()},
                "sessions": sessions,
            },
            resume_path,
        )

    how_to_continue = continue_with("experiments.pretrain_resnet", args.out)
    writer = SummaryWriter(str(args.logdir or args.out.parent / "tb"))
    bar = tqdm(
        total=args.epochs * steps_per_epoch,
        initial=start_epoch * steps_per_epoch + start_step,
        desc=f"pretrain ResNet-{args.depth}",
        unit="step",
    )
    with InterruptFlag() as stop:
        for epoch in range(start_epoch, args.epochs):
            model.train()
            t0 = time.perf_counter()
            if order is None:
                order = torch.randperm(len(train_x), device=device, generator=generator)
                sums = [torch.zeros((), device=device), torch.zeros((), device=device)]  # loss, correct
            loss_sum, correct = sums
            for step in range(start_step, steps_per_epoch):
                idx = order[step * batch_size : (step + 1) * batch_size]
                x = random_crop_flip(train_x[idx], generator)
                y = train_y[idx]
                logits, loss = sgd_step(model, optimizer, x, y, args.precision, args.label_smoothing, keep)
                scheduler.step()
                loss_sum += loss
                correct += (logits.argmax(1) == y).sum()
                bar.update()
                if stop.requested and step + 1 < steps_per_epoch:
                    elapsed += time.perf_counter() - t0
                    save_resume(epoch, step + 1, order, sums)
                    bar.close()  # before the one line that says how to continue
                    raise Interrupted(
                        f"interrupted in epoch {epoch + 1} after {step + 1} steps; resume state saved in "
                        f"{resume_path}. {how_to_continue}"
                    )
            start_step, order = 0, None
            elapsed += time.perf_counter() - t0
            seen = steps_per_epoch * batch_size
            stats = {"loss": (loss_sum / steps_per_epoch).item(), "accuracy": (correct / seen).item()}
            if not (math.isfinite(stats["loss"]) and all(bool(torch.isfinite(p).all()) for p in model.parameters())):
                kept = f"{resume_path} keeps epoch {epoch}" if epoch > 0 else "nothing was saved"
                raise UsageError(
                    f"training diverged in epoch {epoch + 1} (loss {stats['loss']}, or non-finite weights): {kept}. "
                    "Lower --lr"
                )
            writer.add_scalar("train/loss", stats["loss"], epoch + 1)
            writer.add_scalar("train/accuracy", stats["accuracy"], epoch + 1)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], epoch + 1)
            if val is not None:  # the figure that chooses between runs (the test split is read once, at the end)
                stats["val_accuracy"] = accuracy(model, *val, keep)
                writer.add_scalar("val/accuracy", stats["val_accuracy"], epoch + 1)
            bar.set_postfix(epoch=epoch + 1, **{k: f"{v:.4f}" for k, v in stats.items()})
            val_text = f" val_acc {stats['val_accuracy']:.4f}" if val is not None else ""
            tqdm.write(
                f"epoch {epoch + 1}/{args.epochs} loss {stats['loss']:.4f} "
                f"train_acc {stats['accuracy']:.4f}{val_text} time {elapsed:.0f}s"
            )
            save_resume(epoch + 1)
            if stop.requested and epoch + 1 < args.epochs:
                writer.close()
                bar.close()
                raise Interrupted(
                    f"interrupted after epoch {epoch + 1}; resume state saved in {resume_path}. {how_to_continue}"
                )
    bar.close()

    test_accuracy = accuracy(model, test_x, test_y, keep)
    writer.add_scalar("test/accuracy", test_accuracy, args.epochs)
    writer.close()
    pruned = {"keep_blocks": list(FixedBlocks(args.keep_blocks, model.num_blocks).blocks)} if keep is not None else {}
    summary = {
        "test_accuracy": test_accuracy,
        **({"val_accuracy": accuracy(model, *val, keep)} if val is not None else {}),
        **pruned,
        "epochs": args.epochs,
        "train_seconds": round(elapsed, 1),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "train_images": len(train_x),
        "test_images": len(test_x),
        "args": {k: str(v) for k, v in asdict(args).items()},
        "sessions": sessions,
        **meta,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    save_resnet(args.out, model, **summary)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    resume_path.unlink(missing_ok=True)
    print(f"test accuracy {test_accuracy:.4f} after {args.epochs} epochs ({elapsed:.0f}s); saved {args.out}")
    return summary


if __name__ == "__main__":
    run(main, Args, "experiments.pretrain_resnet", __doc__)
