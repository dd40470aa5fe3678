"""Turn a state dict of the original Diff-UNet release (github.com/ge-xing/DiffUNet) into a checkpoint of ours.

The result loads like any checkpoint of this project and reproduces the release's inference (log-SNR time
input, mean fusion, boundary logits added); what is mapped, checked and dropped: light_training/release.py.

Examples:
    python tools/convert_release.py --source=final_model_0.9460.pt --output=diffunet_release.pt
    python tools/convert_release.py --source=release.pt --output=out.pt --plans=./data/fullres/train/plans.json
    python tools/convert_release.py --source=release.pt --output=out.pt --channel_names=CT --label_names=background,airway
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from light_training.stages import run  # noqa: E402
from light_training.stages.convert import convert_release  # noqa: E402

source = ""  # state dict of the original release (torch.save of model.state_dict())
output = ""  # checkpoint of this project to write
plans = None  # plans.json of our preprocessing to store (needed to predict raw images)
dataset = "release"  # dataset name of the minimal plan (without plans)
channel_names = None  # comma-separated channel names, e.g. CT or t1n,t1c,t2w,t2f; None: channel_0, ...
label_names = None  # comma-separated class names, background first; None: background, class_1, ...
patch_size = None  # [z,y,x] sliding window to predict with; None: the plan's patch, else the paper's [128,128,128]

run(convert_release, globals())
