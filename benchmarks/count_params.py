"""Parameter count of DiffUNet per component, against the original release's 63,042,720 (DiffUNet(1, 2)).

The release builds two modules it never calls: a 1x1x1 MBA conv at the bottleneck (the bottleneck uses
the parameter-free affinity fusion) and nnU-Net's deep-supervision heads on the lower decoder stages of
both U-Nets (only the top head is used without deep supervision). This implementation leaves them out.

Examples:
    python benchmarks/count_params.py
    python benchmarks/count_params.py --in_channels=4 --num_classes=4
    python benchmarks/count_params.py --preset=tiny
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from diffunet import DiffUNet  # noqa: E402
from light_training.config import apply_overrides  # noqa: E402

preset = "paper"  # "paper" or "tiny"
in_channels = 1  # image channels (1 for AIIB2023 CT, 4 for BraTS2023)
num_classes = 2  # classes with background (2 for AIIB2023, 4 for BraTS2023)
config = apply_overrides(globals())

ORIGINAL = 63_042_720  # the release's DiffUNet(1, 2), counted from its model code


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


model = DiffUNet(in_channels, num_classes, preset=preset)
rows = [("boundary encoder", count(model.boundary.encoder)),
        ("boundary decoder", count(model.boundary.decoder)),
        ("denoiser encoder stages", count(model.denoiser.stages)),
        ("denoiser decoder", count(model.denoiser.decoder)),
        ("MBA 1x1x1 convs", count(model.denoiser.mba) if model.denoiser.mba is not None else 0),
        ("time embedding", count(model.denoiser.time_embedding)),
        ("label embedding", count(model.label_embedding)),
        ("total", count(model))]
print(f"DiffUNet({in_channels}, {num_classes}, preset={preset!r})")
print(f"{'component':<26}{'parameters':>14}")
for name, n in rows:
    print(f"{name:<26}{n:>14,}")
if (preset, in_channels, num_classes) == ("paper", 1, 2):
    features, k = model.config["features"], num_classes
    unused_mba = 2 * features[-1] * features[-1] + features[-1]
    unused_heads = 2 * sum(c * k + k for c in features[1:-1])  # deep-supervision heads, both U-Nets
    total = rows[-1][1]
    print(f"{'original release':<26}{ORIGINAL:>14,}")
    print(f"{'  unused bottleneck conv':<26}{unused_mba:>14,}")
    print(f"{'  unused DS heads (x2)':<26}{unused_heads:>14,}")
    print(f"{'  release - unused':<26}{ORIGINAL - unused_mba - unused_heads:>14,}")
    print(f"difference to the release: {total - ORIGINAL:+,} ({(total - ORIGINAL) / ORIGINAL:+.2%})")
