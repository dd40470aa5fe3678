"""Export a trained model as one file (nnU-Net's nnUNetv2_export_model_to_zip): the folds' checkpoints, the
plan, the dataset description, the training constants, the postprocessing and the cross-validation
metrics in one zip, which every prediction script takes as --model=FILE.zip on any machine.

Examples:
    python tools/export_model.py --logdir=./logs/diffunet --output=./diffunet_model.zip   # every fold found
    python tools/export_model.py --logdir=./logs/diffunet_brats2023 --folds=[0,1,2,3,4] --checkpoint_name=final --output=./brats_model.zip
    python tools/export_model.py --checkpoint=./diffunet_release.pt --output=./release_model.zip   # tools/convert_release.py's output
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from light_training.stages import run  # noqa: E402
from light_training.stages.export import export  # noqa: E402

logdir = "./logs/diffunet"  # the training run: fold 0 in logdir, fold k in logdir/fold_k
folds = None  # e.g. [0, 1, 2, 3, 4]; None: every fold of logdir that has its checkpoint
checkpoint_name = "best"  # of each fold: "best" or "final"
checkpoint = None  # a checkpoint file or a list of files instead of logdir's folds (e.g. a converted release)
# cross-validation metrics to include, e.g. ./prediction_results/result_metrics/diffunet_summary.json (its .csv
# goes too); None: <logdir>/crossval/ where the metrics script wrote them
metrics = None
output = "./diffunet_model.zip"  # the zip to write

run(export, globals())
