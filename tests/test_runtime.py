"""Hardware rules as pure functions, every branch a GPU would take: precision by compute capability, device
requests that cannot be met, cuDNN/TF32 settings, what the training compile compiles."""
import pytest
import torch

from diffunet import build_network
from light_training.compilation import (announce_compile, compile_for_training, is_compiled, recompile_limit,
                                        training_compile_targets)
from light_training.runtime import (PRECISIONS, backend_settings, configure_backends, cuda_fp32_math, cuda_precision,
                                    device_problem, fp32_math, resolve_device, resolve_precision)

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


def _switches() -> dict:
    """Every TF32 query torch has, new and legacy; a query that raises is recorded as its error."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    queries = {"get_float32_matmul_precision": torch.get_float32_matmul_precision,
               "matmul.allow_tf32": lambda: matmul.allow_tf32, "cudnn.allow_tf32": lambda: cudnn.allow_tf32,
               "matmul.fp32_precision": lambda: matmul.fp32_precision,
               "cudnn.conv.fp32_precision": lambda: cudnn.conv.fp32_precision,
               "cudnn.rnn.fp32_precision": lambda: cudnn.rnn.fp32_precision}
    answers = {}
    for name, query in queries.items():
        try:
            answers[name] = query()
        except RuntimeError as err:
            answers[name] = f"raises: {str(err)[:60]}"
    return answers


IEEE = {"get_float32_matmul_precision": "highest", "matmul.allow_tf32": False, "cudnn.allow_tf32": False,
        "matmul.fp32_precision": "ieee", "cudnn.conv.fp32_precision": "ieee", "cudnn.rnn.fp32_precision": "ieee"}
TF32 = {"get_float32_matmul_precision": "high", "matmul.allow_tf32": True, "cudnn.allow_tf32": True,
        "matmul.fp32_precision": "tf32", "cudnn.conv.fp32_precision": "tf32", "cudnn.rnn.fp32_precision": "tf32"}


@pytest.mark.parametrize("before", ["fresh", "parents tf32", "parents ieee", "operations tf32"])
def test_configure_backends_keeps_every_tf32_query_working(before):
    """The switches are process-wide flags that a CPU build holds too, so the CUDA branch runs here: "fp32" is
    IEEE and "bf16"/"fp16" TF32 by every query, whatever was set before (the newer parent switches, as
    configure_backends set them before issue 25, or a user's own per-operation ones, which setting only the
    parent to "ieee" leaves TF32), and no query raises."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.benchmark, cudnn.fp32_precision, cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision,
             matmul.fp32_precision)  # the newer getters: they never raise
    try:
        if before.startswith("parents"):
            cudnn.fp32_precision = matmul.fp32_precision = before.split()[1]
        elif before == "operations tf32":  # an explicit per-operation value is not overridden by its parent's
            cudnn.conv.fp32_precision = cudnn.rnn.fp32_precision = matmul.fp32_precision = "tf32"
        for precision, expected, math in [("fp32", IEEE, "ieee"), ("bf16", TF32, "tf32"), ("fp32", IEEE, "ieee"),
                                          ("fp16", TF32, "tf32")]:
            configure_backends(torch.device("cuda:0"), precision)
            assert cudnn.benchmark and _switches() == expected, precision
            assert cuda_fp32_math() == math
    finally:  # back as it was, consistently for both kinds of query (the parent first: it sets its children)
        cudnn.benchmark, cudnn.fp32_precision = saved[:2]
        cudnn.allow_tf32, matmul.allow_tf32 = saved[2] == "tf32", saved[4] == "tf32"
        cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision, matmul.fp32_precision = saved[2:]


def test_a_tf32_override_turns_every_fp32_switch_to_tf32():
    """A benchmark's TF32 candidate (fp32 on TF32 tensor cores): every query says TF32, not only the parent
    switch (an operation set to "ieee" before does not inherit a parent's "tf32")."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.benchmark, cudnn.fp32_precision, cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision,
             matmul.fp32_precision)
    try:
        configure_backends(torch.device("cuda:0"), "fp32")
        assert _switches() == IEEE
        assert configure_backends(torch.device("cuda:0"), "fp32", tf32=True)["tf32"]
        assert _switches() == TF32 and cuda_fp32_math() == "tf32"
        assert not configure_backends(torch.device("cpu"), "fp32", tf32=True)["tf32"]  # a CUDA mode only
    finally:
        cudnn.benchmark, cudnn.fp32_precision = saved[:2]
        cudnn.allow_tf32, matmul.allow_tf32 = saved[2] == "tf32", saved[4] == "tf32"
        cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision, matmul.fp32_precision = saved[2:]


def test_fp32_math_names_what_runs():
    assert fp32_math("ieee", "ieee") == fp32_math("none", "ieee") == "ieee"  # "none": never switched, IEEE
    assert fp32_math("tf32", "tf32") == "tf32"
    assert fp32_math("tf32", "none") == "tf32 convolutions, ieee matmuls"
    assert fp32_math("ieee", "tf32") == "ieee convolutions, tf32 matmuls"


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
