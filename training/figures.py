"""PNG figures of a run: loss curves, expert load per layer, and evaluation examples."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_losses(records: list[dict], path: Path) -> None:
    """Total loss and every logged term against the step, one panel each."""
    terms = ["loss"] + sorted({k for r in records for k in r.get("loss_terms", {})})
    columns = min(3, len(terms))
    rows = -(-len(terms) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    steps = [r["step"] for r in records]
    for ax, term in zip(axes.flat, terms):
        values = [r["loss"] if term == "loss" else r.get("loss_terms", {}).get(term, np.nan) for r in records]
        ax.plot(steps, values)
        ax.set_title(term)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(terms):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_expert_load(load: np.ndarray, expert_names: list[str], path: Path) -> None:
    """Heat map of the share of each layer's tokens routed to each expert."""
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * load.shape[1], 1.0 + 0.45 * load.shape[0]))
    image = ax.imshow(load, cmap="viridis", vmin=0, aspect="auto")
    ax.set_xticks(range(load.shape[1]), expert_names, rotation=45, ha="right")
    ax.set_yticks(range(load.shape[0]), [f"layer {i}" for i in range(load.shape[0])])
    for (row, col), value in np.ndenumerate(load):
        ax.text(col, row, f"{value:.2f}", ha="center", va="center", color="w", fontsize=7)
    fig.colorbar(image, ax=ax, label="share of routed tokens")
    ax.set_title("Expert load per IC-MoE layer (evaluation split)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_examples(examples: list[tuple], expert_names: list[str] | None, path: Path) -> None:
    """Rows of image / ground truth / prediction / winning expert per token."""
    columns = 4 if expert_names else 3
    fig, axes = plt.subplots(len(examples), columns, figsize=(3 * columns, 3 * len(examples)), squeeze=False)
    for row, (image, target, prediction, winner) in zip(axes, examples):
        row[0].imshow(image)
        row[1].imshow(target, cmap="gray")
        row[2].imshow(prediction, cmap="gray")
        if expert_names and winner is not None:
            shown = row[3].imshow(winner, cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
            handles = [plt.Rectangle((0, 0), 1, 1, color=shown.cmap(shown.norm(i))) for i in range(len(expert_names))]
            row[3].legend(handles, expert_names, fontsize=6, loc="lower right")
        for ax, title in zip(row, ["image", "ground truth", "prediction", "winning expert (last layer)"]):
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def expert_names(kinds: list[str]) -> list[str]:
    """Labels `kind i` for experts given by kind, numbered within each kind."""
    seen: dict[str, int] = {}
    names = []
    for kind in kinds:
        names.append(f"{kind} {seen.get(kind, 0)}")
        seen[kind] = seen.get(kind, 0) + 1
    return names
