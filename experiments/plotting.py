"""Small matplotlib helpers shared by the experiment scripts (headless backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def save_plot(fig: plt.Figure, ax: plt.Axes, xlabel: str, ylabel: str, path: Path, legend: bool = True) -> None:
    """Label, grid, legend, save at 120 dpi and close."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
