"""Memory options in fp32 on the CPU: MC-Diff passes in chunks and activation checkpointing change memory,
not results; gradient accumulation of 2 x 1 equals the mean gradient of the two batches (DDP's average)."""
import pytest
import torch

from diffunet import build_network, set_memory_options
from diffunet.memory_options import checkpointed_stages
from light_training.training.loss import training_loss


def _batch(b: int = 2, patch=(16, 16, 24), num_classes: int = 3):
    g = torch.Generator().manual_seed(1)
    label = torch.randint(0, num_classes, (b, *patch), generator=g)
    return torch.randn(b, 1, *patch, generator=g) + label[:, None], label


def _loss_and_grads(model, image, label, seed: int | None = 0, epoch: int = 5):
    model.zero_grad(set_to_none=True)
    if seed is not None:
        torch.manual_seed(seed)
    output = model(image, label)
    loss = training_loss(output, label, epoch, 10)["loss"]
    loss.backward()
    return output, loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_mc_chunks_give_the_same_uncertainty_and_loss():
    torch.manual_seed(0)
    model = build_network("diffunet", 1, 3, preset="tiny", mc_samples=3)
    image, label = _batch()
    reference, loss, _ = _loss_and_grads(model, image, label)
    for chunk in (1, 2, 5):
        set_memory_options(model, mc_chunk=chunk)
        output, chunked_loss, _ = _loss_and_grads(model, image, label)
        torch.testing.assert_close(output.uncertainty, reference.uncertainty, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(chunked_loss, loss, rtol=1e-5, atol=1e-6)
    assert reference.uncertainty.std() > 0  # the passes differ: something to compare


@pytest.mark.parametrize("variant", ["diffunet", "unet"])
def test_checkpointing_gives_the_same_gradients(variant):
    torch.manual_seed(0)
    model = build_network(variant, 1, 3, preset="tiny")
    image, label = _batch()
    _, loss, grads = _loss_and_grads(model, image, label)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    set_memory_options(model, checkpointing=True)
    assert len(checkpointed_stages(model)) == (14 if variant == "diffunet" else 7)
    assert model.state_dict().keys() == state.keys()  # checkpoints stay interchangeable
    _, loss_ckpt, grads_ckpt = _loss_and_grads(model, image, label)
    torch.testing.assert_close(loss_ckpt, loss)
    for a, b in zip(grads_ckpt, grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    set_memory_options(model, checkpointing=False)
    assert all("forward" not in stage.__dict__ for stage in checkpointed_stages(model))


def test_bad_memory_options_are_refused():
    model = build_network("diffunet", 1, 3, preset="tiny")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="mc_chunk"):
            set_memory_options(model, mc_chunk=bad)
    with pytest.raises(ValueError, match="checkpointing"):
        set_memory_options(model, checkpointing="yes")


def test_accumulation_of_two_batches_of_one_is_their_mean_gradient(tmp_path):
    """2 x 1 accumulated = the mean of the two batches' gradients: the update of 2 GPUs x 1 under DDP (the
    soft Dice is nnU-Net's batch Dice, computed per micro-batch as it is per GPU)."""
    from light_training.training.step import TrainSettings
    from light_training.training.trainer import Trainer

    image, label = _batch(2)
    halves = [{"image": image[i:i + 1], "label": label[i:i + 1]} for i in range(2)]
    torch.manual_seed(0)
    model = build_network("diffunet", 1, 3, preset="tiny")
    settings = TrainSettings(batch_size=1, accumulate_steps=2, grad_clip=1e9, precision="fp32", max_epoch=10)
    trainer = Trainer(model, settings, tmp_path, None, {}, torch.device("cpu"))
    assert trainer.effective_batch == 2 and trainer.state(0)["effective_batch"] == 2
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    terms = trainer.train_step(halves, 4)
    accumulated = [p.grad.clone() for p in model.parameters()]
    model.load_state_dict(before)
    torch.manual_seed(3)  # the same draws of t and noise, in the same order
    separate, losses = [], []
    for half in halves:
        _, loss, grads = _loss_and_grads(model, half["image"], half["label"], seed=None, epoch=4)
        separate.append(grads)
        losses.append(loss)
    torch.testing.assert_close(terms["loss"], (losses[0] + losses[1]) / 2)
    for a, g0, g1 in zip(accumulated, *separate):
        torch.testing.assert_close(a, (g0 + g1) / 2, rtol=1e-5, atol=1e-7)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="accumulate_steps"):
            Trainer(model, TrainSettings(accumulate_steps=bad), tmp_path, None, {}, torch.device("cpu"))

