"""Measured speed of the deployed classifiers: the shipped agents (``agents.classifier``, each image
running only the blocks its policy keeps, policy included) beside the shipped static ResNets, all
with their batch norms folded into the convolutions (the deployed form). For each: test accuracy,
FLOPs per image, per-image latency at batch 1 (median and 90th percentile, one thread and all) and
throughput at larger batches, each as a ratio to a reference network measured in the same run: an
agent's to the full ResNet it drops blocks of, a static ResNet's to the ResNet-32 (the env's
default). The models take turns in rounds (:func:`measure`), so that a drift in the machine's speed
during the run does not favour the models measured first. Used by the ``deploy`` section of
``experiments.bench``; its table and plot are :func:`markdown` and :func:`plot`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from agents.classifier import BlockDropClassifier, fold_batch_norm
from blockdrop_env.checkpoint import load_resnet
from blockdrop_env.device import synchronize
from experiments.plotting import plt, save_plot

STATIC_REFERENCE_DEPTH = 32


@dataclass
class Deployed:
    """A classifier as deployed: ``classify`` maps uint8 images to (logits, FLOPs per image)."""

    name: str
    kind: str  # "agent" or "static"
    depth: int  # of the ResNet it runs (an agent: the one it drops blocks of)
    classify: Callable[[Tensor], tuple[Tensor, Tensor]]
    decide: Callable[[Tensor], object] | None = None  # an agent's policy alone: where its time goes

    @property
    def reference_depth(self) -> int:
        """The full ResNet its ratios are taken to."""
        return self.depth if self.kind == "agent" else STATIC_REFERENCE_DEPTH


def static_resnet(depth: int, device: torch.device) -> Deployed:
    """The shipped ResNet of ``depth``, every block run, batch norms folded."""
    resnet = fold_batch_norm(load_resnet(depth=depth, device=device)[0])

    def classify(images: Tensor) -> tuple[Tensor, Tensor]:
        return resnet(images), torch.full((len(images),), float(resnet.flops()), device=images.device)

    return Deployed(f"ResNet-{depth}", "static", depth, classify)


def shipped_agent(name: str, device: torch.device) -> Deployed:
    """A shipped agent (or a training run's ``agent.pt``) as a classifier, batch norms folded."""
    model = BlockDropClassifier.load(name, device=device).folded()

    def classify(images: Tensor) -> tuple[Tensor, Tensor]:
        logits, keep = model.classify(images)
        return logits, model.flops(keep)

    return Deployed(name, "agent", model.resnet.depth, classify, model.decide)


def batches(images: Tensor, labels: Tensor, size: int) -> Iterator[tuple[Tensor, Tensor]]:
    for start in range(0, len(images), size):
        yield images[start : start + size], labels[start : start + size]


@torch.inference_mode()
def latency_ms(
    call: Callable[[Tensor], object], images: Tensor, threads: int | None = None, warmup: int = 20
) -> Tensor:
    """Milliseconds of ``call`` on each image alone (batch 1), in order, with ``threads`` CPU
    threads (None: as set). For a classifier: the decision and its host synchronisation included."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for image in images[:warmup]:
            call(image[None])
        synchronize(images.device)
        times = []
        for image in images:
            t0 = time.perf_counter()
            call(image[None])
            synchronize(images.device)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return torch.tensor(times, dtype=torch.float64) * 1e3


class Pass(NamedTuple):
    """One timed pass of a model over some images."""

    seconds: float
    correct: int
    """Images classified right."""
    flops: float
    """FLOPs summed over the images."""


@torch.inference_mode()
def timed_pass(model: Deployed, images: Tensor, labels: Tensor, batch: int) -> Pass:
    """One timed pass over ``images`` in batches of ``batch``, after one warm-up batch."""
    model.classify(images[:batch])
    synchronize(images.device)
    correct, flops = torch.zeros((), device=images.device), torch.zeros((), dtype=torch.float64, device=images.device)
    t0 = time.perf_counter()
    for x, y in batches(images, labels, batch):
        logits, image_flops = model.classify(x)
        correct += (logits.argmax(1) == y).sum()
        flops += image_flops.sum()
    synchronize(images.device)
    seconds = time.perf_counter() - t0
    return Pass(seconds, int(correct.item()), flops.item())


def measure(
    models: list[Deployed],
    images: Tensor,
    labels: Tensor,
    latency_images: int,
    throughput_batches: tuple[int, ...],
    rounds: int = 5,
    on_round: Callable[[int], None] | None = None,
) -> list[dict]:
    """Each model's row: accuracy, FLOPs, batch-1 latency (first ``latency_images`` images; one
    thread and all, on the CPU) and throughput at each batch (all of ``images``).

    The models take turns in ``rounds`` rounds, each round timing every model on its share of the
    images: a drift in the machine's speed during the run (a shared VM's neighbours, clock changes)
    then reaches every model alike, not only those measured last, so the ratios between models
    hold. Percentiles are over every image's latency, throughput over all the rounds' passes."""
    threads = {"1 thread": 1, "all threads": None} if images.device.type == "cpu" else {"": None}
    latency_images = min(latency_images, len(images))
    rounds = max(1, min(rounds, latency_images))
    shares = zip(
        torch.arange(latency_images).tensor_split(rounds), torch.arange(len(images)).tensor_split(rounds), strict=True
    )
    times: list[dict[str, list[Tensor]]] = [{} for _ in models]
    passes: list[dict[int, list[Pass]]] = [{batch: [] for batch in throughput_batches} for _ in models]
    for r, (latency_share, pass_share) in enumerate(shares):
        for model, model_times, model_passes in zip(models, times, passes, strict=True):
            for label, count in threads.items():
                calls = {f"latency {label}".strip(): model.classify}
                if model.decide is not None:
                    calls[f"policy latency {label}".strip()] = model.decide
                for key, call in calls.items():
                    model_times.setdefault(key, []).append(latency_ms(call, images[latency_share], count))
            for batch in throughput_batches:
                model_passes[batch].append(timed_pass(model, images[pass_share], labels[pass_share], batch))
        if on_round is not None:
            on_round(r + 1)
    rows = []
    for model, model_times, model_passes in zip(models, times, passes, strict=True):
        row: dict = {"name": model.name, "kind": model.kind, "depth": model.depth, "reference": model.reference_depth}
        for key, parts in model_times.items():
            ms = torch.cat(parts)
            if key.startswith("policy"):  # where an agent's time goes: the median is enough
                row[key] = ms.median().item()
            else:
                row[key] = {"p50_ms": ms.median().item(), "p90_ms": ms.quantile(0.9).item()}
        row["latency_images"] = latency_images
        row["rounds"] = rounds
        for batch, batch_passes in model_passes.items():  # the rounds' passes cover every image once
            row.setdefault("accuracy", sum(p.correct for p in batch_passes) / len(images))
            row.setdefault("flops", sum(p.flops for p in batch_passes) / len(images))
            row[f"throughput batch {batch}"] = len(images) / sum(p.seconds for p in batch_passes)
        rows.append(row)
    return rows


def with_ratios(rows: list[dict]) -> list[dict]:
    """Each row's FLOPs, latencies and throughputs as ratios to its reference network's row (the
    static ResNet of ``reference`` depth, which must be among the rows): time ratios are reference
    time / row time (above 1: faster), so that they read like the FLOPs saved (reference FLOPs /
    row FLOPs)."""
    static = {r["depth"]: r for r in rows if r["kind"] == "static"}
    out = []
    for row in rows:
        ref = static.get(row["reference"])
        if ref is None:
            raise ValueError(f"{row['name']}: its reference, the ResNet-{row['reference']}, was not measured")
        ratios = {"flops": ref["flops"] / row["flops"]}
        for key, value in row.items():
            if key.startswith("latency ") and isinstance(value, dict):
                ratios[key] = ref[key]["p50_ms"] / value["p50_ms"]
            elif key.startswith("throughput batch"):
                ratios[key] = value / ref[key]
        out.append({**row, "speedup": ratios})
    return out


def markdown(rows: list[dict]) -> str:
    """The table: absolute figures, and each speed-up next to the FLOPs one (x: times the reference)."""
    latency_keys = [k for k in rows[0] if k.startswith("latency ") and isinstance(rows[0][k], dict)]
    throughput_keys = [k for k in rows[0] if k.startswith("throughput batch")]
    head = ["model", "accuracy (%)", "GFLOPs/image", "reference", "FLOPs saved (x)"]
    for key in latency_keys:
        head += [f"batch-1 {key[8:] or 'latency'} p50 / p90 (ms)", "speed-up (x)"]
    for key in throughput_keys:
        head += [f"{key} (images/s)", "speed-up (x)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        s = r["speedup"]
        cells = [r["name"], f"{100 * r['accuracy']:.2f}", f"{r['flops'] / 1e9:.4f}", f"ResNet-{r['reference']}"]
        cells.append(f"{s['flops']:.2f}")
        for key in latency_keys:
            cells += [f"{r[key]['p50_ms']:.2f} / {r[key]['p90_ms']:.2f}", f"{s[key]:.2f}"]
        for key in throughput_keys:
            cells += [f"{r[key]:,.0f}", f"{s[key]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    agents = [r for r in rows if r["kind"] == "agent"]
    if agents:  # where an agent's batch-1 time goes: its policy, and the blocks it runs
        lines += ["", "| agent | " + " | ".join(f"policy p50 {k[8:]} (ms, share)" for k in latency_keys) + " |"]
        lines.append("|---|" + "---|" * len(latency_keys))
        for r in agents:
            cells = [r["name"]]
            for key in latency_keys:
                policy = r[f"policy {key}"]
                cells.append(f"{policy:.2f} ({100 * policy / r[key]['p50_ms']:.0f}%)")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Accuracy against FLOPs and against measured batch-1 latency, side by side: static ResNets as
    a line, agents as points."""
    latency_key = next(k for k in rows[0] if k.startswith("latency ") and isinstance(rows[0][k], dict))
    panels = {
        "GFLOPs per image (policy included)": lambda r: r["flops"] / 1e9,
        f"batch-1 latency, median (ms, {latency_key[8:] or 'GPU'})": lambda r: r[latency_key]["p50_ms"],
    }
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (xlabel, x) in zip(axes, panels.items(), strict=True):
        static = sorted((r for r in rows if r["kind"] == "static"), key=x)
        accuracy = [100 * r["accuracy"] for r in static]
        ax.plot([x(r) for r in static], accuracy, "o-", color="gray", label="static ResNets")
        for r in static:
            ax.annotate(r["name"], (x(r), 100 * r["accuracy"]), fontsize=8)
        for r in rows:
            if r["kind"] == "agent":
                ax.plot(x(r), 100 * r["accuracy"], "*", markersize=10, label=r["name"])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    save_plot(fig, axes[1], xlabel, "test accuracy (%)", path)
