"""Evaluate BlockDrop policies on a CIFAR split as the paper's ``test.py`` did, next to the
heuristic baselines (full ResNet, FirstK and RandomK for K = 1..15).

    python -m experiments.evaluate                         # baselines with the shipped ResNet
    python -m experiments.evaluate --list-policies         # the shipped agents' names
    python -m experiments.evaluate --policy NAME --baselines full   # a shipped agent beside the full ResNet
    python -m experiments.evaluate --policy runs/blockdrop/agent.pt --out runs/evaluate/mine
    python -m experiments.evaluate --policy NAME --also OTHER --static 20 26 --published   # the accuracy-FLOPs front
    python -m experiments.evaluate --depth 110 --split val --baselines full --landscape   # blocks by drop cost
    python -m experiments.evaluate --depth 110 --pruned runs/pruned/r110-k20.pt   # a pruned rival beside the baselines

Writes ``summary.json``, ``table.md`` and plots (accuracy against FLOPs; with a policy also a
histogram of blocks kept, block usage per class and the images of the most frequent policies). With
--static, each other row's gap to the line through our static ResNets at its FLOPs is a column too.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import torch

from agents.baselines import FixedBlocks, FullPolicy, blocks_by_drop_cost, drop_landscape, heuristic_policies
from agents.evaluation import Evaluation, evaluate, make_eval_env
from agents.pretrained import check_ship_name, list_policies, load_policy, policy_path, ship
from agents.reinforce import BlockDropAgent
from blockdrop_env.checkpoint import default_checkpoint, load_checkpoint, run_metadata, shipped_depths
from blockdrop_env.data import SPLITS
from blockdrop_env.device import Precision
from experiments.cli import (
    DataArgs,
    UsageError,
    check_device,
    check_writable,
    lock_folder,
    require,
    require_choice,
    require_penalty,
    require_positive,
    run,
)
from experiments.plotting import save_plot
from experiments.published import published_rows

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class Args(DataArgs):
    policy: str | None = None
    """A shipped agent's name (--list-policies) or an agent checkpoint from
    ``experiments.train_blockdrop``; none: baselines only."""
    also: tuple[str, ...] = ()
    """More agents (shipped names or checkpoints) evaluated beside --policy, into the same table and
    accuracy-FLOPs plot (--ship and the per-policy plots concern --policy alone)."""
    list_policies: bool = False
    """Print the shipped agents' names, one per line, and stop."""
    ship: str | None = None
    """Add the evaluated --policy checkpoint to the shipped agents under this name (agents/trained/),
    with this evaluation and its training command in <name>.json; needs --baselines full or all."""
    depth: int = 32
    """Depth of the base ResNet: 32 (BlockDrop-CIFAR10-R32, 15 blocks) or 110 (BlockDrop-CIFAR10-R110,
    54 blocks); its shipped checkpoint unless --checkpoint."""
    checkpoint: Path | None = None
    """Base ResNet checkpoint of the baselines (and of a policy saved without a finetuned ResNet);
    default: the shipped one. A policy saved with its finetuned ResNet is evaluated with that."""
    split: str = "test"
    """Split to walk in order: test, val (the 5,000 images held out of training for choosing epochs
    and settings), train or trainval."""
    limit: int | None = None
    """Walk only the first N images of the split (a quicker, noisier look; not with --ship)."""
    penalty: float = -1.0
    """Penalty of a wrong prediction, for the mean reward column."""
    baselines: Literal["all", "full", "none"] = "all"
    """Baselines to evaluate too: all (full ResNet, FirstK and RandomK for every budget K), full, none."""
    budgets: tuple[int, ...] = ()
    """Budgets K of the FirstK and RandomK baselines (e.g. 12 24 36 for the ResNet-110's 54 blocks);
    default: every K from 1 to the number of blocks."""
    static: tuple[int, ...] = ()
    """Depths of shipped static ResNets to evaluate too, every block (e.g. 20 26): the accuracy-FLOPs
    front that dropping blocks of the ResNet-32 has to beat."""
    pruned: tuple[Path, ...] = ()
    """ResNet checkpoints pruned to one block set for every image (``experiments.pretrain_resnet
    --keep-blocks``), evaluated as static rivals with their blocks."""
    published: bool = False
    """Add published reference points to the table and plot (He et al.'s static ResNets, the BlockDrop
    paper, a public reproduction; see experiments.published)."""
    landscape: bool = False
    """Also the drop landscape: the accuracy with each single block dropped (which blocks matter), and
    the blocks ordered by what their drop costs (``blocks_by_drop_cost`` in summary.json: the first k
    are the blocks of a network pruned to k; choose them on --split val)."""
    batch_size: int | None = None
    """Images per batched forward; default: 1000 on CUDA, 256 on the CPU."""
    seed: int = 0
    """Seed of RandomK."""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda."""
    precision: Precision = "auto"
    """auto: the env's and the policy's half precision where the device has it natively; fp32: fp32."""
    out: Path = Path("runs/evaluate/default")
    """Folder for summary.json, table.md and the plots (locked while the evaluation runs)."""
    overwrite: bool = False
    """Write into an --out that holds a training run (its summary.json is replaced), and let --ship
    replace a shipped agent of the same name."""
    plots: bool = True
    """Draw the plots."""


def row(name: str, ev: Evaluation) -> dict:
    return {"name": name, **ev.summary()}


def static_row(name: str, ev: Evaluation) -> dict:
    """A static ResNet's row: its blocks are all of another network's, so no reward at our penalty."""
    return {**row(name, ev), "static": True, "reward_mean": None}


def is_our_static(r: dict) -> bool:
    """A point of our static line: the full ResNet evaluated and the shipped static ResNets
    (--static), not published figures nor pruned networks."""
    return (bool(r.get("static")) and not r.get("published") and not r.get("pruned")) or r["name"] == "full ResNet"


def with_static_line_gap(rows: list[dict]) -> list[dict]:
    """The rows, each with ``vs_static_line``: its accuracy less the accuracy of the line through our
    static ResNets' points (straight between neighbours) at its FLOPs, as a fraction; above 0, the
    row beats a static network of its cost. None for the line's own points, outside its span, and
    where there are fewer than two points."""
    line = sorted((r["flops_mean"], r["accuracy"]) for r in rows if is_our_static(r))
    flops, accuracy = zip(*line, strict=True) if line else ((), ())
    gapped = []
    for r in rows:
        gap = None
        inside = len(line) >= 2 and r["flops_mean"] is not None and flops[0] <= r["flops_mean"] <= flops[-1]
        if inside and not is_our_static(r):
            gap = r["accuracy"] - float(np.interp(r["flops_mean"], flops, accuracy))
        gapped.append({**r, "vs_static_line": gap})
    return gapped


def _cell(value: float | None, fmt: str, std: float | None = None, scale: float = 1.0) -> str:
    if value is None:
        return ""
    text = format(value * scale, fmt)
    return text if std is None else f"{text} +- {format(std * scale, fmt)}"


def markdown_table(rows: list[dict]) -> str:
    """Blank cells where a row has no figure (a published point, a static ResNet's reward, the gap
    to the static line of a row outside it; see :func:`with_static_line_gap`)."""
    lines = [
        "| policy | accuracy (%) | blocks kept (mean +- std) | GFLOPs (mean +- std) | unique policies | mean reward "
        "| vs our static line (points) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = (
            _cell(r["accuracy"], ".2f", scale=100),
            _cell(r["blocks_mean"], ".2f", r["blocks_std"]),
            _cell(r["flops_mean"], ".4f", r["flops_std"], scale=1e-9),
            "" if r["unique_policies"] is None else str(r["unique_policies"]),
            _cell(r["reward_mean"], ".4f"),
            _cell(r.get("vs_static_line"), "+.2f", scale=100),
        )
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy_flops(rows: list[dict], path: Path) -> None:
    """FirstK and RandomK as curves, the static ResNets (ours: the full ResNet and --static; and
    published) as fronts, every policy as a star, published agents as hollow diamonds. With a static
    front or a policy, a second panel zooms on the accuracy of the networks worth using."""
    heuristic = ("FirstK", "RandomK", "drop block")
    ours = [r for r in rows if is_our_static(r)]
    published = [r for r in rows if r.get("published") and r["flops_mean"] is not None]
    policies = [r for r in rows if not (r["name"].startswith(heuristic) or r in ours or r.get("published"))]
    focus = ours[1:] + published + policies
    fig, axes = plt.subplots(1, 2 if focus else 1, figsize=(12 if focus else 7, 4.5), squeeze=False)

    def draw(ax: plt.Axes) -> None:
        def curve(selected: list[dict], style: str, label: str, **kw: object) -> None:
            pts = sorted((r["flops_mean"] / 1e6, 100 * r["accuracy"]) for r in selected)
            if pts:
                ax.plot(*zip(*pts, strict=True), style, ms=4, label=label, **kw)

        for prefix, style in (("FirstK", "o-"), ("RandomK", "s-")):
            curve([r for r in rows if r["name"].startswith(prefix)], style, prefix, alpha=0.6)
        if len(ours) > 1:
            curve(ours, "D-", "static ResNets (ours)", color="k")
        curve([r for r in published if r["static"]], "D--", "static ResNets (published)", color="grey", mfc="none")
        for r in policies:
            marker, size = ("X", 10) if r.get("pruned") else ("*", 12)
            ax.plot(r["flops_mean"] / 1e6, 100 * r["accuracy"], marker, ms=size, label=r["name"])
        for r in published:
            if not r["static"]:
                ax.plot(r["flops_mean"] / 1e6, 100 * r["accuracy"], "d", ms=8, mfc="none", label=r["name"])
        ax.set_xlabel("MFLOPs per image (policy included)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)

    for ax in axes[0]:
        draw(ax)
    if focus:
        accuracy = [100 * r["accuracy"] for r in focus + ours]
        mflops = [r["flops_mean"] / 1e6 for r in focus + ours]
        zoom = axes[0, 1]
        zoom.set_ylim(min(accuracy) - 2, max(accuracy) + 0.5)
        zoom.set_xlim(min(mflops) - 15, max(mflops) + 10)
        zoom.set_title("zoomed on the agents and the static ResNets", fontsize=9)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    rows_of_legend = math.ceil(len(labels) / 3)
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.06 * rows_of_legend, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_landscape(rows: list[dict], path: Path) -> None:
    """Test accuracy with each single block dropped, against the full ResNet's."""
    drops = [r for r in rows if r["name"].startswith("drop block")]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(range(len(drops)), [100 * r["accuracy"] for r in drops])
    full = next((r for r in rows if r["name"] == "full ResNet"), None)
    if full is not None:
        ax.axhline(100 * full["accuracy"], color="k", ls="--", lw=1, label="every block")
    ax.set_xticks(range(0, len(drops), 1 if len(drops) <= 20 else len(drops) // 9))  # one per stage's sixth at 54
    # From zero unless every drop stays near the top (the ResNet-110), where zero would hide them all.
    ax.set_ylim(bottom=max(0.0, 100 * min(r["accuracy"] for r in drops) - 5))
    save_plot(fig, ax, "block dropped", "accuracy (%)", path, legend=full is not None)


def plot_policy(ev: Evaluation, images: torch.Tensor, out: Path, num_blocks: int) -> None:
    """Histogram of blocks kept, usage of each block per class, images of frequent policies."""
    blocks = ev.keep.sum(1)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(blocks.numpy(), bins=torch.arange(num_blocks + 2).numpy() - 0.5, rwidth=0.9)
    save_plot(fig, ax, "blocks kept", "images", out / "blocks_hist.png", legend=False)

    classes = int(ev.labels.max()) + 1
    usage = torch.stack([ev.keep[ev.labels == c].float().mean(0) for c in range(classes)])
    fig, ax = plt.subplots(figsize=(7, 4))
    im = ax.imshow(usage.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xlabel("block")
    ax.set_yticks(range(classes), CLASSES[:classes] if classes == 10 else range(classes))
    fig.colorbar(im, label="fraction of images that run the block")
    fig.tight_layout()
    fig.savefig(out / "usage_per_class.png", dpi=120)
    plt.close(fig)

    policies, inverse, counts = torch.unique(ev.keep, dim=0, return_inverse=True, return_counts=True)
    top = counts.argsort(descending=True)[:4]
    fig, axes = plt.subplots(len(top), 9, figsize=(9, 1.3 * len(top)), squeeze=False)
    for r, p in enumerate(top):
        members = (inverse == p).nonzero().flatten()[:8]
        policy, size = "".join("1" if b else "0" for b in policies[p].tolist()), 7
        if num_blocks > 15:  # one line per stage, smaller, so 54 blocks fit beside the images as 15 do
            stage = num_blocks // 3
            policy, size = "\n".join(policy[i : i + stage] for i in range(0, num_blocks, stage)), 5.5
        axes[r, 0].text(0, 0.5, f"{policy}\n{counts[p]} images", fontsize=size, va="center", family="monospace")
        for c in range(9):
            axes[r, c].axis("off")
        for c, i in enumerate(members.tolist()):
            axes[r, c + 1].imshow(images[i].permute(1, 2, 0).numpy())
    fig.tight_layout()
    fig.savefig(out / "frequent_policies.png", dpi=120)
    plt.close(fig)


def load_named(policy: str, args: Args, ship_as: str | None = None) -> tuple[str, BlockDropAgent]:
    """An agent by shipped name or checkpoint, and its row's name (a run's folder names it)."""
    try:
        agent = load_policy(policy, device=args.device, precision=args.precision)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    path = Path(policy)
    label = ship_as or (path.parent.name if path.stem == "agent" else path.stem)
    return f"BlockDrop ({label})", agent


def main(args: Args) -> list[dict]:
    if args.list_policies:
        print("\n".join(list_policies()))
        return []
    require_penalty(args, "penalty")
    require_positive(args, "batch_size", "limit")
    require(args.ship is None or args.limit is None, "--ship evaluates on the whole split: drop --limit")
    require_choice(args, "split", SPLITS)
    shipped = shipped_depths()
    for depth in args.static:
        require(depth in shipped, f"--static {depth}: no shipped ResNet-{depth} (shipped: {shipped})")
    shippable = args.policy is not None and args.baselines != "none"
    require(args.ship is None or shippable, "--ship needs --policy and the full ResNet beside it (--baselines full)")
    require(not args.also or args.policy is not None, "--also needs --policy")
    require(
        not args.published or args.depth in (32, 110), "--published: there are published points for depths 32 and 110"
    )
    if args.ship is not None:
        try:
            check_ship_name(args.ship, args.overwrite)
        except ValueError as e:
            raise UsageError(f"--ship: {str(e).replace('pass overwrite', 'pass --overwrite')}") from None
    require(
        args.overwrite or not (args.out / "agent.pt").exists(),
        f"{args.out} holds a training run (agent.pt): its summary.json would be replaced; "
        "choose another --out, or pass --overwrite",
    )
    check_writable(args.out)  # before the evaluation, not after it
    lock_folder(args.out)
    check_device(args.device)
    args.fetch_data()
    named = [load_named(p, args, args.ship) for p in ((args.policy,) if args.policy is not None else ())]
    named += [load_named(p, args) for p in args.also]

    def eval_env(**resnet: object):  # the split, batches, penalty and forward of every evaluation here
        return make_eval_env(
            args.split,
            args.batch_size,
            args.limit,
            penalty=args.penalty,
            device=args.device,
            precision=args.precision,
            data_dir=args.data_dir,
            **resnet,
        )

    env = eval_env(checkpoint=args.checkpoint, depth=args.depth)
    k_total = env.num_blocks
    for name, agent in named:
        blocks = agent.policy.num_blocks
        require(blocks == k_total, f"{name} decides {blocks} blocks; the ResNet-{args.depth} has {k_total}")
    for k in args.budgets:
        require(1 <= k <= k_total, f"--budgets: {k} is not in [1, {k_total}]")
    rows, evaluations = [], {}
    base_state = {k: v.clone() for k, v in env.resnet.state_dict().items()}
    for name, agent in named:
        if agent.resnet_state is not None:
            env.resnet.load_state_dict(agent.resnet_state)  # the ResNet finetuned with the policy
        evaluations[name] = evaluate(env, agent.greedy, agent.policy.flops())
        rows.append(row(name, evaluations[name]))
        env.resnet.load_state_dict(base_state)  # the next agent's, and the baselines, on the base ResNet
    if args.baselines != "none":
        rows.append(row("full ResNet", evaluate(env, FullPolicy(k_total))))
    if args.baselines == "all":
        for name_k, heuristic in heuristic_policies(k_total, args.seed, env.device, args.budgets or None):
            rows.append(row(name_k, evaluate(env, heuristic)))
    if args.landscape:
        rows += [row(name_k, evaluate(env, drop)) for name_k, drop in drop_landscape(k_total)]
    for depth in args.static:
        static_env = eval_env(checkpoint=default_checkpoint(depth), depth=depth)
        rows.append(static_row(f"static ResNet-{depth}", evaluate(static_env, FullPolicy(static_env.num_blocks))))
    for path in args.pruned:
        meta = load_checkpoint(path)
        blocks = meta.get("keep_blocks")
        require(
            bool(blocks), f"--pruned {path}: not a pruned ResNet (no keep_blocks; see pretrain_resnet --keep-blocks)"
        )
        pruned_env = eval_env(checkpoint=path, depth=meta["depth"])
        pruned = FixedBlocks(blocks, pruned_env.num_blocks)
        name = f"pruned ResNet-{meta['depth']} ({len(blocks)} blocks, {path.stem})"
        rows.append({**static_row(name, evaluate(pruned_env, pruned)), "pruned": True, "keep_blocks": blocks})
    if args.published:
        rows += published_rows(args.depth)

    rows = with_static_line_gap(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    recorded = env.task.checkpoint_meta.get("test_accuracy")
    drops = [r["accuracy"] for r in rows if r["name"].startswith("drop block")]
    summary = {
        "rows": rows,
        **({"blocks_by_drop_cost": blocks_by_drop_cost(drops)} if drops else {}),
        "resnet_checkpoint_test_accuracy": recorded,
        "args": {k: str(v) for k, v in asdict(args).items()},
        **run_metadata(),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = markdown_table(rows)
    (args.out / "table.md").write_text(table)
    if args.plots:
        plot_accuracy_flops(rows, args.out / "accuracy_vs_flops.png")
        if args.landscape:
            plot_landscape(rows, args.out / "drop_landscape.png")
        if named:
            plot_policy(evaluations[named[0][0]], env.task.images.cpu(), args.out, k_total)
    print(table)
    if drops:
        ranked = " ".join(map(str, summary["blocks_by_drop_cost"]))
        print(f"blocks by drop cost, costliest first ({args.split}): {ranked}")
    full = next((r for r in rows if r["name"] == "full ResNet"), None)
    if full is not None:
        print(
            f"full ResNet {args.split} accuracy {full['accuracy']:.4f} "
            f"(the checkpoint records test accuracy {recorded})"
        )
    print(f"wrote {args.out}/")
    if args.ship is not None:
        beside = [rows[0], full]  # the shipped agent and the full ResNet, whatever else was evaluated
        card = {"evaluated": run_metadata()["command"], "split": args.split, "penalty": args.penalty, "rows": beside}
        print(f"shipped as {args.ship}: {ship(policy_path(args.policy), args.ship, card, args.overwrite)}")
    return rows


if __name__ == "__main__":
    run(main, Args, "experiments.evaluate", __doc__)
