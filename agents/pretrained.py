"""Trained BlockDrop agents shipped with the package, loaded by name.

    from agents.pretrained import list_policies, load_policy
    agent = load_policy(list_policies()[0])          # or a path to any agent.pt
    keep = agent.greedy(images)                      # (B, K) bool keep mask

Each shipped agent is ``agents/trained/<name>.pt`` (policy, and the ResNet finetuned with it
when there is one), with ``<name>.json`` beside it: the commands that trained and evaluated it and
its test figures (README, Results).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from blockdrop_env.checkpoint import atomic_write_text
from blockdrop_env.device import Precision

from .reinforce import BlockDropAgent, agent_from_checkpoint, load_agent, load_agent_checkpoint, save_agent

SHIPPED = Path(__file__).resolve().parent / "trained"


def list_policies() -> list[str]:
    """Names of the shipped agents, sorted."""
    return sorted(path.stem for path in SHIPPED.glob("*.pt"))


def policy_path(name_or_path: str | os.PathLike) -> Path:
    """The checkpoint of a shipped agent's name, or ``name_or_path`` itself when it is a file."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if str(name_or_path) in list_policies():
        return SHIPPED / f"{name_or_path}.pt"
    shipped = ", ".join(list_policies()) or "none"
    raise FileNotFoundError(f"{name_or_path} is neither an agent checkpoint nor a shipped agent (shipped: {shipped})")


def policy_card(name: str) -> dict[str, Any]:
    """What is recorded of a shipped agent: commands, test figures (the card beside its checkpoint)."""
    return json.loads(policy_path(name).with_suffix(".json").read_text())


def load_policy(
    name_or_path: str | os.PathLike, device: str | torch.device = "auto", precision: Precision = "auto"
) -> BlockDropAgent:
    """A shipped agent by name (see :func:`list_policies`), or any agent checkpoint by path; a
    finetuned ResNet comes with it as ``agent.resnet_state``."""
    return load_agent(policy_path(name_or_path), device, precision)


def check_ship_name(name: str, overwrite: bool = False) -> None:
    """Refuse a name that is not letters, digits, '-' and '_', or that a shipped agent has already
    (unless ``overwrite``), with a ValueError that says so."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise ValueError(f"a shipped agent's name is letters, digits, '-' and '_'; got {name!r}")
    if not overwrite and name in list_policies():
        raise ValueError(f"{name} is a shipped agent already: choose another name, or pass overwrite to replace it")


def ship(checkpoint: str | os.PathLike, name: str, card: dict[str, Any], overwrite: bool = False) -> Path:
    """Add the agent of a training checkpoint to the shipped ones as ``name``: its policy (and
    finetuned ResNet) without the optimiser and generator states a resume needs, with ``card``
    (how it was evaluated) and how it was trained beside it. Returns the shipped checkpoint.
    An existing shipped agent of that name is replaced only with ``overwrite``."""
    check_ship_name(name, overwrite)
    ckpt = load_agent_checkpoint(checkpoint)
    agent = agent_from_checkpoint(ckpt, device="cpu")
    kept = ("command", "git_commit", "date", "machine", "epoch", "stage", "best", "args")  # best: a best.pt's walk
    trained = {k: ckpt[k] for k in kept if k in ckpt}
    path = SHIPPED / f"{name}.pt"
    save_agent(path, agent, resnet=agent.resnet_state, trained=trained)
    card = {"name": name, "trained": trained, **card}
    atomic_write_text(SHIPPED / f"{name}.json", json.dumps(card, indent=2) + "\n")
    return path
