"""Synthetic cases in the exact raw layouts of AIIB2023, BraTS2023 or a dataset of your own (nnU-Net's layout),
so that every command of the pipeline runs before the real data is at hand.

The data is made for checking that the pipeline runs and learns, not for reporting accuracy
(light_training/synthetic/: the anatomy drawn, one generator per case, byte-identical for one seed).

Examples:
    python tools/generate_synthetic.py --dataset=aiib2023 --num_cases=12 --out=./data/raw_data
    python tools/generate_synthetic.py --dataset=brats2023 --num_cases=12 --out=./data/raw_data --shape=(155,240,240)
    python tools/generate_synthetic.py --dataset=example --num_cases=8
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from light_training.stages import run  # noqa: E402
from light_training.synthetic.generate import generate_dataset  # noqa: E402

# aiib2023 (chest CT, airway), brats2023 (brain MRI, glioma) or example (nnU-Net layout)
dataset = "aiib2023"
num_cases = 12  # number of cases
out = "./data/raw_data"  # output folder; the dataset's own folder is made inside it
seed = 0  # same seed, byte-identical arrays
shape = None  # (z,y,x) of every case; None: (96, 112, 112) (AIIB, varied per case) or (64, 80, 72) (BraTS)
processes = 1  # AIIB and BraTS cases generated in parallel (the same files); a full-size case takes about 20 s

run(generate_dataset, globals())
