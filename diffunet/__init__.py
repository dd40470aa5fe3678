"""Diff-UNet: a diffusion-embedded network for robust 3D medical image segmentation.

``from diffunet import DiffUNet``; see :mod:`diffunet.model`.
"""
from diffunet.boundary import boundary_target
from diffunet.model import DiffUNet, DiffUNetOutput
from diffunet.presets import PRESETS

__all__ = ["DiffUNet", "DiffUNetOutput", "PRESETS", "boundary_target"]
