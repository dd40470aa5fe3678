"""Hardware rules as pure functions, every branch a GPU would take: precision by compute capability, device
requests that cannot be met, cuDNN/TF32 settings, what the training compile compiles."""
import pytest
import torch

from diffunet import build_network
from light_training.runtime import (PRECISIONS, announce_compile, backend_settings, compile_for_training,
                                    configure_backends, cuda_precision, device_problem, is_compiled, recompile_limit,
                                    resolve_device, resolve_precision, training_compile_targets)

# (capability, examples): below 8.0 cuDNN has no bf16 convolutions
OLD = [(6, 1), (7, 0), (7, 5)]  # P40/GTX 10xx, V100, T4/RTX 20xx/Quadro RTX 6000
NEW = [(8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)]  # A100, RTX 30xx/A6000, L40/RTX 40xx, H100, B200, RTX 50xx


@pytest.mark.parametrize("capability", OLD + NEW)
def test_cuda_precision_by_capability(capability):
    native = capability >= (8, 0)
    assert cuda_precision("auto", capability) == ("bf16" if native else "fp16")
    assert cuda_precision("fp16", capability) == "fp16"
    assert cuda_precision("fp32", capability) == "fp32"
    if native:
        assert cuda_precision("bf16", capability) == "bf16"
    else:
        with pytest.raises(ValueError, match=rf"compute capability {capability[0]}\.{capability[1]}.*'fp16'"):
            cuda_precision("bf16", capability)
    with pytest.raises(ValueError, match="expected one of"):
        cuda_precision("tf32", capability)


def test_cpu_precision_is_unchanged():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) in ("bf16", "fp32")
    assert [resolve_precision(p, cpu) for p in PRECISIONS[1:]] == ["fp32", "bf16", "fp16"]


@pytest.mark.parametrize("requested,built,count,expected", [
    ("cpu", False, 0, None),
    ("cuda:0", True, 2, None),
    ("cuda", True, 1, None),
    ("cuda:1", True, 2, None),
    ("cuda:0", False, 0, "CPU build without CUDA"),
    ("cuda:0", True, 0, "finds no GPU it can use: no NVIDIA driver, or one older than CUDA 12.8"),
    ("cuda:2", True, 2, "only 2 GPU(s) here (cuda:0 to cuda:1"),
])
def test_device_problem_names_what_is_missing(requested, built, count, expected):
    problem = device_problem(requested, built, count, "12.8")
    if expected is None:
        assert problem is None
    else:
        assert expected in problem and "--device=cpu" in problem and repr(requested) in problem


def test_resolve_device_refuses_instead_of_falling_back():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():  # the CPU build CI runs on
        with pytest.raises(ValueError, match="--device=cpu"):
            resolve_device("cuda:0")


def test_backend_settings():
    assert backend_settings("cuda", "fp32") == {"cudnn_benchmark": True, "tf32": False}  # IEEE fp32 as asked
    assert backend_settings("cuda", "bf16") == backend_settings("cuda", "fp16") == {"cudnn_benchmark": True, "tf32": True}
    assert backend_settings("cpu", "bf16") == {"cudnn_benchmark": False, "tf32": False}
    assert configure_backends(torch.device("cpu"), "fp32") == backend_settings("cpu", "fp32")


def test_configure_backends_sets_the_cuda_switches():
    """The switches are process-wide flags that a CPU build holds too, so the CUDA branch runs here."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.benchmark, cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision, matmul.fp32_precision
    try:
        configure_backends(torch.device("cuda:0"), "fp32")
        assert cudnn.benchmark and cudnn.conv.fp32_precision == "ieee" and matmul.fp32_precision == "ieee"
        configure_backends(torch.device("cuda:0"), "bf16")
        assert cudnn.conv.fp32_precision == "tf32" and matmul.fp32_precision == "tf32"
    finally:
        cudnn.benchmark = saved[0]
        cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision, matmul.fp32_precision = saved[1:]


def test_training_compile_targets_regional_and_whole():
    model = build_network("diffunet", 1, 2, preset="tiny")
    stages = training_compile_targets(model, regional=True)
    # every encoder stage and decoder block of both U-Nets (4 stages, 3 decoder blocks each in "tiny")
    assert len(stages) == 14 and all(any(s is m for m in model.modules()) for s in stages)
    assert training_compile_targets(model, regional=False) == [model.boundary, model.denoiser]
    plain = build_network("unet", 1, 2, preset="tiny")
    assert training_compile_targets(plain, regional=False) == [plain.unet]
    assert len(training_compile_targets(plain, regional=True)) == 7
    # the limit makes room for every block's graphs, and never lowers a limit set higher
    assert recompile_limit(14, 8) == 56 and recompile_limit(1, 8) == 8 and recompile_limit(22, 200) == 200


def test_compile_for_training_keeps_the_state_dict_and_announces(capsys):
    model = build_network("diffunet", 1, 2, preset="tiny")
    keys = list(model.state_dict())
    assert not is_compiled(model)
    compile_for_training(model)  # lazy: nothing is compiled before the first call
    assert is_compiled(model) and list(model.state_dict()) == keys
    with announce_compile("the training step for patch 16^3"):
        pass
    with announce_compile("nothing", enabled=False):
        pass
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "compiling the training step for patch 16^3 ..."
    assert out[1].startswith("the training step for patch 16^3 compiled in ") and out[1].endswith(" graphs)")
    assert len(out) == 2
