"""The release-conversion stage: a state dict of the original release -> a checkpoint of ours
(``tools/convert_release.py``; the format and the mapping: :mod:`light_training.release`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from light_training.checkpoint import save_checkpoint
from light_training.release import RELEASE_INFERENCE, release_checkpoint
from light_training.config import settings_from

__all__ = ["ConvertSettings", "convert_release"]


@dataclass(frozen=True)
class ConvertSettings:
    """The conversion tool's constants (their comments say what each does), checked once: a release
    state dict to read and a checkpoint to write are both required."""
    source: str
    output: str
    plans: str | None
    dataset: str
    channel_names: str | list[str] | None
    label_names: str | list[str] | None
    patch_size: list[int] | None = None

    def __post_init__(self):
        if not self.source or not self.output:
            raise ValueError(f"give --source=RELEASE.pt and --output=OURS.pt (got source={self.source!r}, "
                             f"output={self.output!r})")

def _names(value: str | list | tuple | None) -> list[str] | None:
    """Channel or class names given as ``a,b,c`` (or as a list)."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return str(value).split(",") if value else None


def convert_release(config: dict[str, Any], script: str) -> Path:
    """Convert ``source`` (``torch.save`` of the release's ``model.state_dict()``) into the checkpoint ``output``
    and print what was mapped and dropped. Raises ``ValueError`` naming ``source`` when it cannot be read or
    converted; nothing is written then."""
    c = settings_from(ConvertSettings, config)
    source, output = str(c.source), str(c.output)
    try:
        release = torch.load(source, map_location="cpu", weights_only=True)
        plans = json.loads(Path(c.plans).read_text()) if c.plans else None
        checkpoint, report = release_checkpoint(release, source, plans, c.dataset, _names(c.channel_names),
                                                _names(c.label_names), c.patch_size)
    except (OSError, ValueError, RuntimeError) as err:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{source}: {err}") from None
    save_checkpoint(checkpoint, output)
    m = checkpoint["model_config"]
    arch = {k: m[k] for k in ("in_channels", "num_classes", "features", "strides")}
    print(f"converted {source} -> {output}: DiffUNet {arch}")
    print("  release inference: " + ", ".join(f"{k}={m[k]!r}" for k in RELEASE_INFERENCE))
    print(f"  {len(report.aliases)} release keys name a tensor another key names (the decoders' copy of their "
          f"encoder, nnU-Net's all_modules views): checked equal, mapped once")
    print(f"  dropped {len(report.dropped)} release keys, {report.dropped_parameters:,} parameters (modules the "
          f"release never calls):")
    for line in report.dropped:
        print(f"    {line}")
    return Path(output)
