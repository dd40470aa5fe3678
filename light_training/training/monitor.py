"""What a training run shows: tensorboard scalars and slices, a ``progress.png`` curve plot redrawn
every epoch (for people who do not run tensorboard), and the one-line epoch summary.

Scalars use the epoch as step; the full history is also kept here (and stored in the checkpoints) so
that the plot of a resumed run shows the whole run.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend state
from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter

from light_training.io import atomic_path

__all__ = ["TrainingMonitor", "summary_line", "middle_slices", "epoch_scalars"]


def middle_slices(image: np.ndarray, label: np.ndarray, prediction: np.ndarray,
                  uncertainty: np.ndarray) -> dict[str, np.ndarray]:
    """Middle axial slices ``(Y, X)`` in [0, 1] of one validation patch for tensorboard.

    Args: image ``(C, Z, Y, X)`` (channel 0 is shown), label and prediction ``(Z, Y, X)`` class indices,
    uncertainty ``(Z, Y, X)`` in [0, 1].
    """
    z = image.shape[1] // 2
    img = image[0, z].astype(np.float32)
    lo, hi = np.percentile(img, [0.5, 99.5])
    num_classes = max(int(label.max()), int(prediction.max()), 1)
    return {"image": np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1),
            "label": label[z].astype(np.float32) / num_classes,
            "prediction": prediction[z].astype(np.float32) / num_classes,
            "uncertainty": np.clip(uncertainty[z].astype(np.float32), 0, 1)}


def summary_line(epoch: int, max_epoch: int, scalars: dict[str, float]) -> str:
    """``epoch 3/1000 | loss 0.812 (ce 0.501 ...) | pseudo Dice 0.71 [0.71] | boundary Dice 0.42 | lr 9.97e-03 |
    41.2 s, 12.1 patches/s, 3 % waiting for data`` (the boundary Dice only for a network with a boundary
    branch; the wait: the share of the training steps' time spent waiting for the next batch)."""
    terms = [k.split("/", 1)[1] for k in scalars if k.startswith("train/") and k != "train/loss"]
    parts = [f"epoch {epoch + 1}/{max_epoch}"]
    if "train/loss" in scalars:
        detail = " ".join(f"{t} {scalars['train/' + t]:.4g}" for t in terms)
        parts.append(f"loss {scalars['train/loss']:.4f}" + (f" ({detail})" if detail else ""))
    if "val/pseudo_dice" in scalars:
        per_class = ", ".join(f"{scalars[k]:.3f}" for k in scalars if k.startswith("val/dice_"))
        parts.append(f"pseudo Dice {scalars['val/pseudo_dice']:.4f} [{per_class}]")
    if "val/boundary_dice" in scalars:  # a collapsed boundary branch shows as 0 here
        parts.append(f"boundary Dice {scalars['val/boundary_dice']:.4f}")
    parts.append(f"lr {scalars.get('lr', float('nan')):.3e}")
    timing = (f"{scalars.get('time/epoch_s', float('nan')):.1f} s, "
              f"{scalars.get('time/patches_per_s', float('nan')):.1f} patches/s")
    if "time/data_wait_share" in scalars:  # the loader's part: near 0 % when it keeps up with the steps
        timing += f", {100 * scalars['time/data_wait_share']:.0f} % waiting for data"
    parts.append(timing)
    return " | ".join(parts)


class TrainingMonitor:
    """Tensorboard events and ``progress.png`` in ``logdir``; does nothing when ``enabled`` is False
    (every rank but 0 under DDP)."""

    def __init__(self, logdir: str | Path, enabled: bool = True, history: dict[str, list] | None = None,
                 start_epoch: int = 0):
        self.logdir, self.enabled = Path(logdir), enabled
        # history: {"train/loss": [[epoch, value], ...], ...}; points from epochs not yet redone are kept
        self.history: dict[str, list[list[float]]] = {
            k: [p for p in v if p[0] < start_epoch] for k, v in (history or {}).items()}
        self.writer = None
        if enabled:
            # purge_step drops events a killed run wrote after its last checkpoint
            self.writer = SummaryWriter(str(self.logdir), purge_step=start_epoch if start_epoch > 0 else None)

    def log_epoch(self, epoch: int, scalars: dict[str, float]) -> None:
        """Record one epoch's scalars (``train/<term>``, ``val/...``, ``lr``, ``time/...``) and redraw the plot."""
        for name, value in scalars.items():
            self.history.setdefault(name, []).append([float(epoch), float(value)])
        if not self.enabled:
            return
        for name, value in scalars.items():
            if math.isfinite(value):
                self.writer.add_scalar(name, value, epoch)
        self.writer.flush()
        self.plot(self.logdir / "progress.png")

    def log_images(self, epoch: int, slices: dict[str, np.ndarray]) -> None:
        """Add ``(Y, X)`` slices in [0, 1] (see :func:`middle_slices`) as ``val/<name>`` images."""
        if not self.enabled:
            return
        for name, array in slices.items():
            self.writer.add_image(f"val/{name}", torch.as_tensor(array)[None], epoch, dataformats="CHW")
        self.writer.flush()

    def plot(self, path: str | Path) -> None:
        """Loss terms, validation Dice (the boundary Dice dashed) and learning rate against the epoch, written
        atomically as PNG."""
        fig = Figure(figsize=(15, 4.2), dpi=100)
        FigureCanvasAgg(fig)
        ax_loss, ax_dice, ax_lr = fig.subplots(1, 3)
        for name, points in sorted(self.history.items()):
            x, y = np.asarray(points, dtype=float).T if points else (np.zeros(0), np.zeros(0))
            if name.startswith("train/"):
                ax_loss.plot(x, y, label=name[6:], lw=2 if name == "train/loss" else 1)
            elif name.startswith("val/"):
                style = ("o" if len(x) < 30 else "") + ("--" if name == "val/boundary_dice" else "-")
                ax_dice.plot(x, y, style, ms=3, label=name[4:], lw=2 if name == "val/pseudo_dice" else 1)
            elif name == "lr":
                ax_lr.plot(x, y, color="tab:green", label="lr")
        for ax, title in ((ax_loss, "training loss terms"), (ax_dice, "validation Dice (patches)"),
                          (ax_lr, "learning rate")):
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        ax_dice.set_ylim(0, 1)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def epoch_scalars(sums: dict[str, torch.Tensor], done: int, skipped: int, data_time: float, loop_time: float,
                  device: torch.device, world_size: int = 1) -> dict[str, float]:
    """An epoch's ``train/<term>`` means from the loss terms' ``sums`` over ``done`` steps, ``steps/skipped``,
    ``time/data_s`` (per rank) and ``time/data_wait_share`` (of ``loop_time``), summed over the ranks."""
    keys = list(sums)  # the loss's own order; the same on every rank (steps are skipped together)
    extra = torch.tensor([done, skipped, data_time, loop_time], dtype=torch.float64, device=device)
    means = torch.cat([torch.stack([sums[k] for k in keys]).to(device), extra]) if keys else extra
    if world_size > 1:
        torch_dist.all_reduce(means)
    means = means.tolist()  # the epoch's one read of the loss terms
    total = max(means[len(keys)], 1.0)
    result = {f"train/{k}": means[i] / total for i, k in enumerate(keys)}
    result["steps/skipped"] = means[len(keys) + 1]
    result["time/data_s"] = means[len(keys) + 2] / world_size
    # the share of the steps' time spent waiting for the loader: near 0 when it keeps up
    result["time/data_wait_share"] = means[len(keys) + 2] / max(means[len(keys) + 3], 1e-9)
    return result
