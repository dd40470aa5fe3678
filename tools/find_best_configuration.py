"""Which trained run, or which ensemble of two runs, to use: each run's held-out predictions (every case by the
fold that did not see it) and every pair's ensemble (their probabilities averaged) scored and ranked by the
dataset's headline metric (AIIB2023: IoU, DLR, DBR; BraTS2023: lesion-wise Dice of WT, TC, ET; a dataset of
one's own: Dice), as nnU-Net's nnUNetv2_find_best_configuration does. Writes
<output_dir>/best_configuration.json with the ranking and the exact prediction command of the winner.

Each run is a folder of held-out predictions under results_dir, predicted with its folds, e.g.
    python 3_predict_aiib2023.py --logdir=./logs/unet --folds=[0,1,2,3,4] --save_dir=./prediction_results/unet --save_probabilities=True --postprocessing=False

Examples:
    python tools/find_best_configuration.py --runs=[diffunet,unet,diffunet_no_mba]
    python tools/find_best_configuration.py --dataset=brats2023 --runs=[diffunet,unet] --results_dir=./prediction_results/brats2023 --raw_dir=./data/raw_data/ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData --output_dir=./prediction_results/brats2023/best_configuration
    python tools/find_best_configuration.py --runs=[diffunet,unet] --ensembles=False --num_processes=2   # on CPU, without the pairs
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from light_training.stages import run  # noqa: E402
from light_training.stages.best_configuration import find_best_configuration  # noqa: E402

dataset = "aiib2023"  # the description whose metrics rank the runs
runs = ["diffunet", "unet"]  # folders of held-out predictions under results_dir, one per trained run
results_dir = "./prediction_results"  # where the runs' folders are
raw_dir = "./data/raw_data/AIIB23_Train_T1"  # the raw dataset, where the ground truth is by default
gt_dir = None  # a folder of <case>.nii.gz ground truths instead
ensembles = True  # also every pair of runs, their <case>.npz probabilities averaged (--save_probabilities=True)
metric = None  # columns whose mean ranks, e.g. ["IoU"]; None: the dataset's headline
input_dir = "./my_scans"  # the scans the printed command predicts
output_dir = "./prediction_results/best_configuration"  # best_configuration.json and each configuration's tables
num_processes = 4  # worker processes scoring the cases; 0 or 1: none

run(find_best_configuration, globals())
