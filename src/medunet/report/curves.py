"""Training curves: loss and validation Dice per epoch, one PNG."""
from __future__ import annotations

from pathlib import Path

# The object API draws to a file without pyplot, so importing medunet never switches the backend of
# a user's notebook or GUI session.
from matplotlib.figure import Figure

from medunet.io.outputs import atomic_write


def plot_history(history: list[dict], path: Path) -> None:
    """Write `curves.png`: training loss (left) and validation Dice (right) against epoch."""
    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(9, 3.5))
    ax_loss, ax_dice = fig.subplots(1, 2)
    ax_loss.plot(epochs, [row["train_loss"] for row in history], marker="o", ms=3)
    ax_loss.set(xlabel="epoch", ylabel="training loss (BCE/CE + Dice)", title="loss")
    validated = [row for row in history if row["val_dice"] == row["val_dice"]]  # NaN: epochs not validated
    ax_dice.plot([row["epoch"] for row in validated], [row["val_dice"] for row in validated], marker="o", ms=3,
                 color="tab:green")
    ax_dice.set(xlabel="epoch", ylabel="validation Dice (mean per image)", title="validation Dice",
                ylim=(0, 1))
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
