"""Train Diff-UNet on the preprocessed cases of AIIB2023 (chest CT, airway).

Writes <logdir>/model/{latest,best,final}.pt (self-describing checkpoints), tensorboard events and
progress.png in <logdir>, and the constants it ran with. A killed run continues with --resume=True;
starting again without it moves the earlier run's files to <logdir>/previous_runs/.

Examples:
    python 2_train_diffunet_aiib2023.py
    torchrun --nproc_per_node=4 2_train_diffunet_aiib2023.py --resume=True     # 4 GPUs, batch_size per GPU
    python 2_train_diffunet_aiib2023.py --device=cpu --model_preset=tiny --patch_size=[48,48,48] --max_epoch=2 --num_iterations_per_epoch=10 --num_workers=1   # on CPU
    python 2_train_diffunet_aiib2023.py --model_variant=unet --logdir=./logs/unet   # the plain U-Net baseline (ablation)
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))
from light_training.stages import run  # noqa: E402
from light_training.stages.train import train  # noqa: E402

dataset = "aiib2023"  # must match the plan in data_dir's parent
data_dir = "./data/fullres/train"  # preprocessed cases (the preprocessing script's output_dir); plans.json in its parent
logdir = "./logs/diffunet"  # checkpoints in <logdir>/model/, tensorboard events and progress.png
max_epoch = 1000  # epochs of num_iterations_per_epoch steps
batch_size = 2  # patches per step (per GPU under torchrun); None: the plan's (plans.json "network")
val_every = 2  # validate (sampling on foreground patches of the held-out fold) every this many epochs
device = "cuda:0"  # "cpu" without a GPU (a GPU that cannot be used is an error); under torchrun each rank takes cuda:LOCAL_RANK
patch_size = [128, 128, 128]  # training patch (z, y, x), the paper's; must suit the model (divisible by 32 for "paper"); None: the plan's
augmentation = True  # nnU-Net's augmentation recipe; False: plain patches
oversample_foreground = 0.33  # share of training patches centred on a foreground voxel (nnU-Net's 0.33)
model_preset = "paper"  # "paper" (the published network) or "tiny" (CPU tests and demos)
planned_network = False  # False: the preset's network (the paper's); True: the plan's per-stage strides and kernels
model_variant = "diffunet"  # "diffunet", or "unet": the same denoiser U-Net fed only the image, DC+CE (baseline)
mba = True  # multi-granularity boundary aggregation (ablation: False)
mc_diff = True  # Monte-Carlo uncertainty weighting of the segmentation loss (ablation: False)
boundary_target = "boundary"  # what the boundary branch learns: "boundary" (paper) or "segmentation" (release)
num_iterations_per_epoch = 250  # training steps per epoch
num_workers = 12  # loading + augmentation processes per GPU (one: about a patch/s at 128^3); 0: in this process
fold = 0  # cross-validation fold 0-4 (splits.json next to plans.json); its validation cases are held out
test_cases = []  # cases kept out of every fold (the original's fixed test list); [] for none
resume = False  # True: continue <logdir>/model/latest.pt (epoch, LR schedule, optimizer, best Dice)
seed = 0  # seeds weights, patches, augmentation and diffusion noise
lr = 1e-2  # initial learning rate of SGD (Nesterov, momentum 0.99), poly decay to 0 at max_epoch
num_val_patches = 50  # validation patches (fixed, foreground-centred) for the pseudo Dice
precision = "auto"  # "auto" (bf16 where the hardware has it, fp16 on GPUs older than compute capability 8.0), "fp32" (IEEE, no TF32), "bf16" or "fp16"
num_threads = None  # CPU threads of torch; None: torch's default (fewer than the cores keep a busy machine steady)
channels_last = None  # weights and patches in channels_last_3d (NDHWC); None: the device's default (off today, light_training.fast_paths)
accumulate_steps = 1  # batches per optimizer step (gradients averaged): effective batch batch_size x this x GPUs
mc_chunk = None  # MC-Diff passes run at once (None: all K in one batch; 1: one at a time, less memory, same loss)
checkpointing = False  # activation checkpointing of the U-Net stages: less memory, about a third more compute
torch_compile = None  # compile the training step: None = on a GPU (once per patch size), off on the CPU (no faster there)
compile_regional = True  # with torch_compile: each U-Net stage compiled on its own (a fraction of the compile time); False: whole networks

run(train, globals())
