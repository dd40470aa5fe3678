"""Diff-UNet: a diffusion-embedded network for robust 3D medical image segmentation.

``from diffunet import DiffUNet``; see :mod:`diffunet.model`. The training stage builds its network with
:func:`build_network` ("diffunet", or the plain U-Net baseline "unet").
"""
from diffunet.baseline import PlainUNet, PlainUNetOutput
from diffunet.boundary import boundary_target
from diffunet.memory_options import set_memory_options
from diffunet.model import DiffUNet, DiffUNetOutput
from diffunet.networks import VARIANTS, build_network, network_from_config
from diffunet.presets import PRESETS
from diffunet.uncertainty import UNCERTAINTIES, SampleOutput

__all__ = ["DiffUNet", "DiffUNetOutput", "PlainUNet", "PlainUNetOutput", "PRESETS", "VARIANTS", "UNCERTAINTIES",
           "SampleOutput", "boundary_target", "build_network", "network_from_config",
           "set_memory_options"]
