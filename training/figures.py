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


def plot_examples(examples: list, expert_names: list[str] | None, path: Path) -> None:
    """Rows of image with its prompt / ground truth / prediction with its Dice / winning expert per token, one row
    per `training.evaluation.Example`."""
    columns = 4 if expert_names else 3
    fig, axes = plt.subplots(len(examples), columns, figsize=(3 * columns, 3 * len(examples)), squeeze=False)
    for row, example in zip(axes, examples):
        row[0].imshow(example.image)
        if example.box is not None:
            x0, y0, x1, y1 = example.box
            row[0].add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.2))
        if example.points is not None:
            row[0].scatter(example.points[:, 0], example.points[:, 1], marker="*", s=60, color="lime", edgecolor="k")
        # The masks are at the model's mask resolution; drawn over the image's extent they line up with it.
        extent = (0, example.image.shape[1], example.image.shape[0], 0)
        row[1].imshow(example.target, cmap="gray", extent=extent)
        row[2].imshow(example.prediction, cmap="gray", extent=extent)
        titles = ["image and prompt", "ground truth", f"prediction (Dice {example.dice:.3f})"]
        if expert_names and example.winner is not None:
            shown = row[3].imshow(example.winner, cmap="tab10", vmin=0, vmax=9, interpolation="nearest", extent=extent)
            handles = [plt.Rectangle((0, 0), 1, 1, color=shown.cmap(shown.norm(i))) for i in range(len(expert_names))]
            row[3].legend(handles, expert_names, fontsize=6, loc="lower right")
            titles.append("winning expert (last layer)")
        for ax, title in zip(row, titles):
            ax.set_title(title, fontsize=9)
        for ax in row:
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
