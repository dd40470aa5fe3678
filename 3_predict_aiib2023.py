"""Predict AIIB2023 (chest CT, airway) with a trained checkpoint (sliding windows, DDIM sampling with PURE, mirroring),
written as NIfTI on exactly the source scans' geometry.

Every scan of input_dir is read and checked before the first window; problems are listed by case and file.
A case already predicted by the same checkpoints and settings is skipped (<case>_record.json), so a stopped
run continues where it stopped.

Examples:
    python 3_predict_aiib2023.py                                   # the held-out fold, best checkpoint
    python 3_predict_aiib2023.py --input_dir=./my_scans --save_uncertainty=True --skip_bad_cases=True
    python 3_predict_aiib2023.py --device=cpu --mirror_axes=[] --overlap=0.25   # on CPU
    python 3_predict_aiib2023.py --folds=[0,1,2,3,4] --input_dir=./my_scans     # the five folds' ensemble
    python 3_predict_aiib2023.py --model=./diffunet_model.zip --input_dir=./my_scans   # an exported model (one file)
    torchrun --nproc_per_node=4 3_predict_aiib2023.py --input_dir=./my_scans   # one part per GPU
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))
from light_training.stages import run  # noqa: E402
from light_training.stages.predict import predict  # noqa: E402

dataset = "aiib2023"  # must match the checkpoint's
logdir = "./logs/diffunet"  # the training run
model = None  # a model zip (tools/export_model.py) to predict with, its folds' ensemble; None: checkpoint/folds below
checkpoint = None  # a checkpoint file, or a list of files (their ensemble); None: the folds' below
folds = None  # e.g. [0, 1, 2, 3, 4]: these folds' ensemble (fold k in <logdir>/fold_k); None: <logdir>/model/best.pt
checkpoint_name = "best"  # of each fold: "best" (best validation pseudo Dice, the original's) or "final"
data_dir = "./data/fullres/train"  # preprocessed cases (the held-out fold is predicted)
input_dir = None  # a folder of raw scans to predict instead, e.g. ./my_scans (img/<case>.nii.gz or <case>.nii.gz)
save_dir = "./prediction_results/diffunet"  # where <case>.nii.gz are written
fold = None  # held-out fold to predict; None: each model's own (every case by the model that did not see it)
overlap = 0.5  # sliding-window overlap
mirror_axes = [0, 1, 2]  # test-time mirroring over these axes (z, y, x); [] for none
sw_batch_size = 1  # windows per network call (each with its mirrored copies)
precision = "auto"  # "auto" (bf16 where the hardware has it), "fp32", "bf16" or "fp16"
steps = None  # DDIM sampling steps; None: the model's own (3)
fusion = None  # how the steps are fused: "pure", "mean", "last"; None: the model's own
uncertainty = "total"  # "total" (entropy of the mean over mirrors and steps) or "mutual_information" (their disagreement)
seed = 0  # starting noise of the sampling, reset for every case; None: different noise every run
torch_compile = True  # torch.compile the networks (~1 min once per window size): 2x faster sampling on the CPU
compile_mode = None  # torch.compile mode: "default", "max-autotune-no-cudagraphs", "reduce-overhead" (CUDA graphs); None: the device's (light_training.fast_paths)
channels_last = None  # weights and windows in channels_last_3d (NDHWC); None: the device's default (off today)
cast_weights = None  # weights in bf16/fp16 instead of autocast casting them per call; None: the device's default (off today)
save_probabilities = False  # also <case>.npz with the class probabilities
save_uncertainty = False  # also <case>_uncertainty.nii.gz (in [0, 1]; the metrics script scores it)
save_preview = False  # also <case>_preview.png: slices with ground truth, prediction and uncertainty
postprocessing = True  # apply the postprocessing chosen on cross-validation (<logdir>/postprocessing.json or the zip's)
overwrite = False  # True: predict every case again; False: skip cases these checkpoints and settings wrote
num_parts = 1  # split the cases into this many disjoint parts (one per GPU or machine); torchrun ranks split further
part_id = 0  # the part this process predicts, 0 .. num_parts - 1
num_processes_preprocessing = None  # processes preprocessing the next cases; None: 2 on CUDA, 0 on the CPU
num_processes_export = None  # processes restoring + writing finished cases; None: 1 on CUDA, 0 on the CPU
skip_bad_cases = False  # True: predict the usable scans of input_dir and list the others; False: stop before any work
nonfinite = "error"  # NaN/Inf voxels in a scan: "error", or "replace" by the scan's minimum (with a warning)
device = "cuda:0"  # "cpu" without a GPU (a GPU that cannot be used is an error); under torchrun: cuda:<local rank>
num_threads = None  # CPU threads of torch; None: torch's default

run(predict, globals())
