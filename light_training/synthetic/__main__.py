"""``python -m light_training.synthetic --dataset=aiib2023 --num_cases=12 --out=./data/raw_data``."""
from light_training.synthetic.generate import main

main()
