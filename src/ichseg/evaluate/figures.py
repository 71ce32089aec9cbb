"""The paper's figures: Dice per epoch, the confusion matrix, and (CT, truth, prediction) rows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen on servers and CI
import matplotlib.pyplot as plt
import numpy as np

from ichseg.files import atomic_write

CREDIT = "Data: CT-ICH (Hssayeni 2019, PhysioNet, CC BY 4.0)"


def _save(fig: plt.Figure, path: Path) -> None:
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)


def plot_dice_history(history: Sequence[dict[str, float]], path: Path, credit: str = CREDIT) -> None:
    """Training (running, at 0.5) and validation Dice per epoch, best epoch marked."""
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["train_score"] for h in history], "o-", label="training Dice")
    ax.plot(epochs, [h["val_score"] for h in history], "s-", label="validation Dice")
    if history:
        best = max(history, key=lambda h: h["val_score"])
        ax.axvline(best["epoch"], color="grey", ls=":", label=f"best epoch {int(best['epoch'])}")
    ax.set(xlabel="epoch", ylabel="Dice (global, model resolution)", ylim=(0, 1), title="U-Net Dice per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.text(0.01, -0.02, credit, fontsize=7, color="grey")
    _save(fig, path)


def plot_confusion(
    counts: dict[str, int], path: Path, title: str = "Two-stage pipeline, slice level", credit: str = CREDIT
) -> None:
    """2×2 confusion matrix with counts (rows: truth, columns: prediction)."""
    m = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]])
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=14, color="white" if v > m.max() / 2 else "black")
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["no ICH", "ICH"],
        yticklabels=["no ICH", "ICH"],
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    fig.text(0.01, -0.02, credit, fontsize=7, color="grey")
    _save(fig, path)


def plot_examples(
    rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, str]], path: Path, title: str, credit: str = CREDIT
) -> None:
    """One row per slice: CT (brain window), ground truth, prediction; Dice in the row label."""
    n = max(len(rows), 1)
    fig, axes = plt.subplots(n, 3, figsize=(8.4, 2.9 * n), squeeze=False)
    for r, (ct, truth, pred, label) in enumerate(rows):
        for c, (img, name) in enumerate(((ct, "CT slice"), (truth, "ground truth"), (pred, "prediction"))):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=255 if c == 0 else 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name)
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.suptitle(title)
    fig.text(0.01, 0.0, credit, fontsize=7, color="grey")
    fig.tight_layout()
    _save(fig, path)
