"""Train Diff-UNet on the preprocessed BraTS2023 cases (glioma; 4 MRI channels t1n, t1c, t2w, t2f and 4 classes
0 background, 1 NCR, 2 ED, 3 ET, both read from plans.json).

Writes <logdir>/model/{latest,best,final}.pt (self-describing checkpoints), tensorboard events and
progress.png in <logdir>, and the constants it ran with (<logdir>/3_train_diffunet_brats2023_config.json).
A killed run continues with --resume=True; starting again without it moves the earlier run's files to
<logdir>/previous_runs/ instead of overwriting them.

Examples:
    python brats2023/3_train_diffunet_brats2023.py
    torchrun --nproc_per_node=4 brats2023/3_train_diffunet_brats2023.py --resume=True     # 4 GPUs, batch_size per GPU
    python brats2023/3_train_diffunet_brats2023.py --device=cpu --model_preset=tiny --patch_size=[48,48,48] --max_epoch=2 --num_iterations_per_epoch=10 --num_workers=1   # on CPU
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from diffunet import DiffUNet  # noqa: E402
from light_training.training.augmentation import make_training_stream  # noqa: E402
from light_training.checkpoint import archive_previous_run  # noqa: E402
from light_training.config import apply_overrides, save_config  # noqa: E402
from light_training.training.dataloading import ValidationPatches  # noqa: E402
from light_training.io import read_json  # noqa: E402
from light_training.inference.prediction import resolve_device  # noqa: E402
from light_training.preprocessing.planning import plans_path  # noqa: E402
from light_training.training.splits import fold_cases  # noqa: E402
from light_training.training.trainer import (Trainer, TrainingStopped, TrainSettings, cleanup_distributed,  # noqa: E402
                                    seed_everything, setup_distributed)

data_dir = "./data/fullres/train"  # preprocessed cases (brats2023/2_preprocessing_brats2023.py), plans.json above
logdir = "./logs/diffunet"  # checkpoints in <logdir>/model/, tensorboard events and progress.png
max_epoch = 1000  # epochs of num_iterations_per_epoch steps
batch_size = 2  # patches per step (per GPU under torchrun)
val_every = 2  # validate (sampling on foreground patches of the held-out fold) every this many epochs
device = "cuda:0"  # falls back to the CPU when CUDA is absent; under torchrun each rank takes cuda:LOCAL_RANK
patch_size = [128, 128, 128]  # training patch (z, y, x); must suit the model (divisible by 32 for "paper")
augmentation = True  # nnU-Net's augmentation recipe; False: plain patches
model_preset = "paper"  # "paper" (the published network) or "tiny" (CPU tests and demos)
num_iterations_per_epoch = 250  # training steps per epoch
num_workers = 8  # loading + augmentation processes (per GPU); 0: in this process
fold = 0  # cross-validation fold 0-4 (splits.json next to plans.json); its validation cases are held out
test_cases = []  # cases kept out of every fold (the original's fixed test list); [] for none
resume = False  # True: continue <logdir>/model/latest.pt (epoch, LR schedule, optimizer, best Dice)
seed = 0  # seeds weights, patches, augmentation and diffusion noise
lr = 1e-2  # initial learning rate of SGD (Nesterov, momentum 0.99), poly decay to 0 at max_epoch
num_val_patches = 50  # validation patches (fixed, foreground-centred) for the pseudo Dice
cpu_bf16 = False  # bf16 autocast on the CPU (CUDA always uses AMP: bf16 where supported, else fp16)
config = apply_overrides(globals())

script = Path(__file__).name
device = resolve_device(device)
dist, device = setup_distributed(device)
seed_everything(seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
try:
    if not plans_path(data_dir).is_file():
        raise ValueError(f"{plans_path(data_dir)} not found: run "
                         f"brats2023/2_preprocessing_brats2023.py first, or point --data_dir at its output")
    plans = read_json(plans_path(data_dir))
    if plans.get("dataset") != "brats2023":
        raise ValueError(f"{plans_path(data_dir)} is a {plans.get('dataset')!r} plan, this script trains brats2023")
    model = DiffUNet(len(plans["channel_names"]), plans["num_classes"], preset=model_preset)
    model.check_patch_size(patch_size)
    if not dist.is_main:
        dist.barrier()  # rank 0 writes splits.json first
    train_cases, val_cases = fold_cases(data_dir, fold, test_cases or None)
    if dist.is_main:
        dist.barrier()
except ValueError as err:
    raise SystemExit(f"{script}: {err}") from None

if dist.is_main:
    if not resume and (moved := archive_previous_run(logdir)) is not None:
        print(f"note: {logdir} held an earlier run, moved to {moved} (use --resume=True to continue a run)")
    save_config(config, Path(logdir) / f"{Path(script).stem}_config.json")
dist.barrier()
settings = TrainSettings(max_epoch=max_epoch, num_iterations_per_epoch=num_iterations_per_epoch, batch_size=batch_size,
                         val_every=val_every, lr=lr, cpu_bf16=cpu_bf16, seed=seed)
trainer = Trainer(model, settings, logdir, plans, config, device, dist)
try:
    if resume:
        trainer.resume()
    stream = make_training_stream(data_dir, train_cases, patch_size, batch_size, augmentation, num_workers,
                                  seed=[seed, dist.rank, trainer.start_epoch])
    validation = ValidationPatches(data_dir, val_cases, patch_size, num_val_patches, seed)
except (ValueError, TrainingStopped) as err:
    raise SystemExit(f"{script}: {err}") from None
if dist.is_main:
    print(f"fold {fold}: {len(train_cases)} training cases, {len(val_cases)} validation cases; "
          f"{model_preset} model on {device} x {dist.world_size}; epochs {trainer.start_epoch + 1}..{max_epoch}")
try:
    result = trainer.fit(stream, validation)
except TrainingStopped as err:
    raise SystemExit(f"{script}: {err}") from None
finally:
    stream.close()
    cleanup_distributed()
if dist.is_main:
    print(f"done: best pseudo Dice {result['best_dice']:.4f}; checkpoints in {Path(logdir) / 'model'}")
