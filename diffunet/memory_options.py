"""Run-time memory settings of a network: trade compute for training memory, architecture unchanged.

``mc_chunk``: how many of Diff-UNet's K MC-Diff passes run at once (None: all K in one batch of K x B).
``checkpointing``: activation checkpointing (``torch.utils.checkpoint``, non-reentrant) of every encoder
and decoder stage of the boundary U-Net, the denoiser and the plain U-Net: a stage keeps only its input
for backward and runs its forward again there (about a third more compute per step). Neither changes
the parameters, ``model.config`` or the checkpoints; both act only in training (with gradients).
"""
from __future__ import annotations

import types

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from diffunet.unet import DenoiseUNet, ImageUNet

__all__ = ["set_memory_options", "checkpointed_stages"]


def checkpointed_stages(model: nn.Module) -> list[nn.Module]:
    """The stages that ``checkpointing=True`` recomputes: every encoder stage and decoder block of each
    U-Net in ``model`` (the boundary branch and the denoiser of a Diff-UNet, the plain U-Net)."""
    stages: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, ImageUNet):
            stages += [*module.encoder.stages, *module.decoder.blocks]
        elif isinstance(module, DenoiseUNet):
            stages += [*module.stages, *module.decoder.blocks]
    return stages


def _checkpointed_forward(self: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """The class's forward, under activation checkpointing while gradients are recorded in training."""
    forward = type(self).forward
    if self.training and torch.is_grad_enabled():
        return checkpoint(forward, self, *args, use_reentrant=False)
    return forward(self, *args)


def set_memory_options(model: nn.Module, mc_chunk: int | None = None, checkpointing: bool = False) -> None:
    """Apply the memory settings to ``model`` (a network of :func:`diffunet.build_network`) in place.

    ``mc_chunk``: MC-Diff passes at once, an int >= 1 or None (all); a network without MC-Diff passes
    ignores it. ``checkpointing``: on or off (off restores the plain forwards). ``ValueError`` on bad values.
    """
    if mc_chunk is not None and (isinstance(mc_chunk, bool) or not isinstance(mc_chunk, int) or mc_chunk < 1):
        raise ValueError(f"mc_chunk={mc_chunk!r}: expected None (all MC-Diff passes at once) or an int >= 1")
    if not isinstance(checkpointing, bool):
        raise ValueError(f"checkpointing={checkpointing!r}: expected True or False")
    if hasattr(model, "mc_chunk"):
        model.mc_chunk = mc_chunk
    for stage in checkpointed_stages(model):
        if checkpointing:  # a bound method on the instance: state_dict and deepcopy are unaffected
            stage.forward = types.MethodType(_checkpointed_forward, stage)
        else:
            stage.__dict__.pop("forward", None)
