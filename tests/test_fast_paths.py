"""light_training.fast_paths: every branch a GPU would take, decided on the CPU."""
import pytest

from light_training.fast_paths import COMPILE_MODES, FastPaths, fast_defaults, resolve_fast_paths


@pytest.mark.parametrize("stage", ["train", "predict"])
@pytest.mark.parametrize("device_type, precision", [("cuda", "bf16"), ("cuda", "fp16"), ("cuda", "fp32"),
                                                     ("cpu", "bf16"), ("cpu", "fp32")])
def test_defaults_are_todays_until_a_gpu_measurement(stage, device_type, precision):
    assert fast_defaults(stage, device_type, precision) == FastPaths(False, False, "default")


def test_explicit_choices_win_and_none_takes_the_default():
    assert resolve_fast_paths("predict", "cuda", "bf16", True, True, "reduce-overhead") == \
        FastPaths(True, True, "reduce-overhead")
    assert resolve_fast_paths("train", "cpu", "fp32", None) == fast_defaults("train", "cpu", "fp32")
    assert resolve_fast_paths("predict", "cpu", "bf16", compile_mode="max-autotune-no-cudagraphs").compile_mode \
        == "max-autotune-no-cudagraphs"


@pytest.mark.parametrize("args, match", [
    (("predict", "cpu", "bf16", None, None, "reduce-overhead"), "CUDA graphs"),
    (("predict", "cuda", "fp32", None, True), "nothing to cast"),
    (("train", "cuda", "bf16", None, True), "training keeps fp32 weights"),
    (("predict", "cuda", "bf16", None, None, "max_autotune"), "expected one of"),
    (("predict", "cuda", "bf16", "yes"), "channels_last='yes'"),
    (("predict", "cuda", "auto"), "resolved precision"),
    (("validate", "cuda", "bf16"), "stage='validate'"),
])
def test_choices_a_device_cannot_take_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        resolve_fast_paths(*args)


def test_compile_modes_are_torch_compiles():
    import torch
    assert set(COMPILE_MODES) - {"default"} <= set(torch._inductor.list_mode_options())
