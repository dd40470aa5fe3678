"""One entry point for the networks the training stage can build: Diff-UNet and the plain U-Net baseline."""
from __future__ import annotations

from typing import Any

from torch import nn

from diffunet.baseline import PlainUNet
from diffunet.model import DiffUNet
from diffunet.presets import ARCHITECTURE_KEYS, PRESETS

__all__ = ["VARIANTS", "MODEL_CLASSES", "build_network", "network_from_config"]

VARIANTS = {"diffunet": DiffUNet, "unet": PlainUNet}  # the training scripts' model_variant
MODEL_CLASSES = {cls.__name__: cls for cls in VARIANTS.values()}  # a checkpoint's model_class


def build_network(variant: str, in_channels: int, num_classes: int, preset: str = "paper",
                  **options: Any) -> nn.Module:
    """The network ``variant`` ("diffunet" or "unet") for ``in_channels`` image channels and
    ``num_classes`` classes (background included), shaped by ``preset`` ("paper", "tiny").

    ``options`` are Diff-UNet's model options (``mba``, ``mc_diff``, ``boundary_target``, ``fusion``,
    ``steps``, ... see :mod:`diffunet.presets`); an option given as None keeps the preset's value.
    "unet" takes the U-Net shape options (``features``, ``strides``, ``convs_per_stage``, ``kernel_size``)
    and ignores the diffusion ones, which do not exist for a plain U-Net. Unknown names raise ValueError.
    The returned network has ``.config`` (JSON-able; ``type(net)(**net.config)`` rebuilds it),
    ``.num_classes``, ``check_patch_size``, ``forward(image, label)`` and ``sample_members``/``sample``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}; expected one of {sorted(VARIANTS)}")
    options = {k: v for k, v in options.items() if v is not None}
    if variant == "unet":
        if preset not in PRESETS:  # the option names are checked against the preset's full list
            raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
        known = PRESETS[preset]()
        unknown = sorted(k for k in options if k not in known)
        if unknown:
            raise ValueError(f"unknown model option(s) {unknown}; options are {sorted(known)}")
        options = {k: v for k, v in options.items() if k in ARCHITECTURE_KEYS}
    return VARIANTS[variant](in_channels, num_classes, preset=preset, **options)


def network_from_config(model_class: str, config: dict[str, Any]) -> nn.Module:
    """Rebuild a checkpoint's network from its ``model_class`` name and ``model_config`` (weights not loaded)."""
    if model_class not in MODEL_CLASSES:
        raise ValueError(f"unknown model class {model_class!r}; expected one of {sorted(MODEL_CLASSES)}")
    return MODEL_CLASSES[model_class](**config)
