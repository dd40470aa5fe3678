"""Predict airway segmentations with a trained Diff-UNet (sliding windows, DDIM sampling with PURE,
mirroring), written as NIfTI on exactly the original scans' geometry.

Examples:
    python 3_predict_aiib2023.py                                   # the held-out fold, best checkpoint
    python 3_predict_aiib2023.py --input_dir=./my_scans --save_uncertainty=True
    python 3_predict_aiib2023.py --device=cpu --mirror_axes=[] --overlap=0.25   # on CPU
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from light_training.config import apply_overrides, save_config  # noqa: E402
from light_training.inference.prediction import (InferenceSettings, compile_for_inference, load_predictor,  # noqa: E402
                                       predict_cases, resolve_device)
from light_training.training.splits import held_out_cases  # noqa: E402

logdir = "./logs/diffunet"  # the training run
checkpoint = None  # a checkpoint file; None: <logdir>/model/best.pt
data_dir = "./data/fullres/train"  # preprocessed cases (the held-out fold is predicted)
input_dir = None  # a folder of raw scans (<case>.nii.gz, or img/<case>.nii.gz) to predict instead
save_dir = "./prediction_results/diffunet"  # where <case>.nii.gz are written
fold = None  # held-out fold to predict; None: the fold the checkpoint was trained on
overlap = 0.5  # sliding-window overlap
mirror_axes = [0, 1, 2]  # test-time mirroring over these axes (z, y, x); [] for none
sw_batch_size = 1  # windows per network call (each with its mirrored copies)
precision = "auto"  # "auto" (bf16 where the hardware has it), "fp32", "bf16" or "fp16"
steps = None  # DDIM sampling steps; None: the model's own (3)
torch_compile = True  # torch.compile the networks (~1 min once per window size): 2x faster sampling on the CPU (bench_speed.py)
save_probabilities = False  # also <case>.npz with the class probabilities
save_uncertainty = False  # also <case>_uncertainty.nii.gz (PURE-fused voxel uncertainty)
device = "cuda:0"  # falls back to the CPU when CUDA is absent
config = apply_overrides(globals())

device = resolve_device(device)
model, ckpt = load_predictor(checkpoint or Path(logdir) / "model" / "best.pt", "aiib2023", device)
if torch_compile:
    compile_for_inference(model)
settings = InferenceSettings(patch_size=ckpt["config"]["patch_size"], overlap=overlap, mirror_axes=mirror_axes,
                             sw_batch_size=sw_batch_size, precision=precision, steps=steps)
cases = [] if input_dir else held_out_cases(data_dir, ckpt["config"]["fold"] if fold is None else fold)
written = predict_cases(model, ckpt, settings, device, save_dir, data_dir=data_dir, cases=cases,
                        input_dir=input_dir, save_probabilities=save_probabilities,
                        save_uncertainty=save_uncertainty)
save_config(config, Path(save_dir) / "3_predict_aiib2023_config.json")
print(f"{len(written)} prediction(s) written to {save_dir}")
