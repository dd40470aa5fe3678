"""Predict your own dataset (nnU-Net's raw layout + dataset.json) with a trained checkpoint (sliding windows, DDIM sampling with PURE, mirroring),
written as NIfTI on exactly the source scans' geometry.

Every scan of input_dir is read and checked before the first window; problems are listed by case and file.

Examples:
    python your_dataset/3_predict.py                                   # the held-out fold, best checkpoint
    python your_dataset/3_predict.py --input_dir=./data/raw_data/Dataset001_Example/imagesTs --save_uncertainty=True --skip_bad_cases=True
    python your_dataset/3_predict.py --device=cpu --mirror_axes=[] --overlap=0.25   # on CPU
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from light_training.stages import run  # noqa: E402
from light_training.stages.predict import predict  # noqa: E402

dataset = "./data/raw_data/Dataset001_Example/dataset.json"  # must match the checkpoint's
logdir = "./logs/Dataset001_Example"  # the training run
checkpoint = None  # a checkpoint file; None: <logdir>/model/best.pt
data_dir = "./data/Dataset001_Example/fullres/train"  # preprocessed cases (the held-out fold is predicted)
input_dir = None  # a folder of raw scans to predict instead, e.g. ./data/raw_data/Dataset001_Example/imagesTs
save_dir = "./prediction_results/Dataset001_Example/diffunet"  # where <case>.nii.gz are written
fold = None  # held-out fold to predict; None: the fold the checkpoint was trained on
overlap = 0.5  # sliding-window overlap
mirror_axes = [0, 1, 2]  # test-time mirroring over these axes (z, y, x); [] for none
sw_batch_size = 1  # windows per network call (each with its mirrored copies)
precision = "auto"  # "auto" (bf16 where the hardware has it), "fp32", "bf16" or "fp16"
steps = None  # DDIM sampling steps; None: the model's own (3)
fusion = None  # how the steps are fused: "pure", "mean", "last"; None: the model's own
uncertainty = "total"  # "total" (entropy of the mean over mirrors and steps) or "mutual_information" (their disagreement)
seed = 0  # starting noise of the sampling, reset for every case; None: different noise every run
torch_compile = True  # torch.compile the networks (~1 min once per window size): 2x faster sampling on the CPU
save_probabilities = False  # also <case>.npz with the class probabilities
save_uncertainty = False  # also <case>_uncertainty.nii.gz (in [0, 1]; the metrics script scores it)
save_preview = False  # also <case>_preview.png: slices with ground truth, prediction and uncertainty
skip_bad_cases = False  # True: predict the usable scans of input_dir and list the others; False: stop before any work
nonfinite = "error"  # NaN/Inf voxels in a scan: "error", or "replace" by the scan's minimum (with a warning)
device = "cuda:0"  # "cpu" without a GPU (a GPU that cannot be used is an error)
num_threads = None  # CPU threads of torch; None: torch's default

run(predict, globals())
