"""benchmarks/gpu_profile.py: its kernel sorting on realistic CUDA kernel names and CPU op names, the sweep's
skip rules, and the whole script at a tiny size on the CPU (so it cannot rot before a GPU is at hand)."""
import json
import subprocess
import sys

import pytest
import torch

from benchmarks.measure import fp32_math, inherited
from benchmarks.profiling import (KINDS, SAMPLE_CANDIDATES, TRAIN_CANDIDATES, Candidate, agreement_sample,
                                  agreement_train, fp32_kernel_math, kernel_kind, skip_reason, time_by_kind)

CUDA_KERNELS = [  # (kernel name as nsys / torch.profiler show it, the ATen op that launched it, kind)
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_ndhwckrsc_ndhwc_tilesize128x128x64_warpgroupsize1x1x1_"
     "g1_execute_segment_k_off_kernel__5x_cudnn", "aten::cudnn_convolution", "conv forward"),
    ("sm80_xmma_fprop_implicit_gemm_indexed_tf32f32_tf32f32_f32_nhwckrsc_nchw_tilesize128x128x16_stage4_warpsize"
     "2x2x1_g1_tensor16x8x8_execute_kernel__5x_cudnn", "aten::cudnn_convolution", "conv forward"),
    ("void implicit_convolveNd_sgemm<float, 3, 1024, 5, 5, 3, 3, 3, 1, false, false, true>(int, int, int, float "
     "const*, int, float*, float const*, kernel_convNd_params, unsigned long long, int, float, float, int, float "
     "const*, float const*, bool, int, int)", "aten::cudnn_convolution", "conv forward"),
    ("void cudnn::winograd_nonfused::winogradForwardData4x4<float, float>(cudnn::winograd_nonfused::"
     "WinogradDataParams<float, float>)", "aten::cudnn_convolution", "conv forward"),
    # cuDNN runs a transposed convolution's forward as dgrad: the op decides
    ("sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_ndhwckrsc_ndhwc_tilesize64x128x64_warpgroupsize1x1x1_"
     "g1_strided_execute_kernel__5x_cudnn", "aten::cudnn_convolution_transpose", "conv forward"),
    ("sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_ndhwckrsc_ndhwc_tilesize64x128x64_warpgroupsize1x1x1_"
     "g1_strided_execute_kernel__5x_cudnn", "aten::convolution_backward", "conv backward"),
    ("sm90_xmma_wgrad_implicit_gemm_bf16bf16_bf16f32_f32_ndhwckrsc_ndhwc_tilesize128x128x64_warpgroupsize1x1x1_"
     "g1_execute_kernel__5x_cudnn", "aten::convolution_backward", "conv backward"),
    ("void convolveNd_dgrad_float_engine<float, 3, 512, 6, 5, 3, 3, 3, false>(int, int, int, float const*, int, "
     "float const*, int, float*, kernel_gradNd_params, unsigned long long, int, unsigned long long, int, float, "
     "int)", "", "conv backward"),
    ("void wgrad_alg1_nd_float_engine<float, 3, 0, 5, 3, 3, 3, false, 512>(int, int, int, float const*, int, "
     "float*, float const*, kernel_gradNd_params, unsigned long long, int, float, int, int, int*, int)", "",
     "conv backward"),
    ("void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, float, false, true, "
     "(cudnnKernelDataType_t)0>(cudnn::engines_precompiled::nchw2nhwc_params_t<float>, __nv_bfloat16 const*, "
     "__nv_bfloat16*)", "aten::cudnn_convolution", "casts and copies"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::bfloat16_copy_kernel_cuda(at::"
     "TensorIteratorBase&)::{lambda(float)#1}, std::array<char*, 2ul> >(int, at::native::bfloat16_copy_kernel_"
     "cuda(at::TensorIteratorBase&)::{lambda(float)#1}, std::array<char*, 2ul>)", "aten::copy_",
     "casts and copies"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy_aligned16_contig<at::native::(anonymous "
     "namespace)::OpaqueType<2u>, unsigned int, 4, 64, 64>(...)", "aten::cat", "casts and copies"),
    ("Memcpy HtoD (Pinned -> Device)", "aten::copy_", "casts and copies"),
    ("void at::native::batch_norm_collect_statistics_kernel<at::native::InvStd, c10::BFloat16, float, float, "
     "int>(...)", "aten::native_batch_norm", "normalisation"),
    ("void cudnn::bn_fw_tr_1C11_kernel_NCHW<__nv_bfloat16, float, 512, true, 1>(...)", "aten::cudnn_batch_norm",
     "normalisation"),
    ("void at::native::batch_norm_backward_elemt_kernel<c10::BFloat16, float, float, int>(...)",
     "aten::native_batch_norm_backward", "normalisation"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous namespace)::leaky_relu_kernel("
     "at::TensorIteratorBase&, c10::Scalar const&)::{lambda()#1}::operator()() const::{lambda()#4}::operator()() "
     "const::{lambda(c10::BFloat16)#1}, std::array<char*, 2ul> >(...)", "aten::leaky_relu_", "element-wise"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>, std::array"
     "<char*, 3ul> >(int, at::native::CUDAFunctor_add<c10::BFloat16>, std::array<char*, 3ul>)", "aten::add_",
     "element-wise"),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, at::native::(anonymous "
     "namespace)::SoftMaxForwardEpilogue>(...)", "aten::_softmax", "element-wise"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
     "TensorListMetadata<3>, at::native::(anonymous namespace)::PointwiseOpScalarFunctor<float, 3, 2, 0>, std::"
     "multiplies<float>, float>(...)", "aten::_foreach_add_", "optimizer"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
     "TensorListMetadata<1>, at::native::(anonymous namespace)::LpNormFunctor<float, (at::native::(anonymous "
     "namespace)::NormType)1, float, float>, float*, int>(...)", "aten::_foreach_norm", "optimizer"),
    ("void at::native::(anonymous namespace)::_amp_non_finite_check_and_unscale_cuda_kernel(...)",
     "aten::_amp_foreach_non_finite_check_and_unscale_", "optimizer"),
    ("triton_red_fused__native_batch_norm_legit_functional_leaky_relu_0", "", "normalisation"),
    ("triton_poi_fused_add_leaky_relu_mul_3", "", "element-wise"),
    ("triton_poi_fused__to_copy_0", "", "casts and copies"),
    ("triton_poi_fused_cat_5", "", "casts and copies"),
    ("triton_tem_fused_convolution_0", "", "conv forward"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x64x64_warpgroupsize1x1x1_execute_segment_k_off_kernel"
     "__5x_cublas", "aten::addmm", "else"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t<float, at::"
     "native::sum_functor<float, float, float>::operator()(at::TensorIterator&)::{lambda(float, float)#1}>, "
     "unsigned int, float, 4, 4> >(...)", "aten::sum", "else"),
]
CPU_OPS = [
    ("aten::mkldnn_convolution", "conv forward"), ("aten::slow_conv3d_forward", "conv forward"),
    ("aten::convolution_backward", "conv backward"),
    ("autograd::engine::evaluate_function: ConvolutionBackward0", "conv backward"),
    ("aten::native_batch_norm", "normalisation"), ("aten::instance_norm", "normalisation"),
    ("aten::native_batch_norm_backward", "normalisation"), ("aten::leaky_relu_", "element-wise"),
    ("aten::leaky_relu_backward", "element-wise"), ("aten::silu", "element-wise"), ("aten::mul", "element-wise"),
    ("aten::copy_", "casts and copies"), ("aten::_to_copy", "casts and copies"), ("aten::to", "casts and copies"),
    ("aten::cat", "casts and copies"), ("aten::flip", "casts and copies"), ("aten::clone", "casts and copies"),
    ("aten::_foreach_add_", "optimizer"), ("Optimizer.step#SGD.step", "optimizer"),
    ("aten::linalg_vector_norm", "optimizer"), ("aten::mm", "else"), ("aten::addmm", "else"),
    ("aten::sum", "else"), ("aten::argmax", "else"), ("aten::topk", "else"),
]


@pytest.mark.parametrize("name, op, kind", CUDA_KERNELS, ids=[f"cuda{i}" for i in range(len(CUDA_KERNELS))])
def test_cuda_kernels_sort_by_kind(name, op, kind):
    assert kernel_kind(name, op) == kind


@pytest.mark.parametrize("op, kind", CPU_OPS)
def test_cpu_ops_sort_by_kind(op, kind):
    assert kernel_kind(op, op) == kind


def test_time_by_kind_keeps_every_kind_and_adds_up():
    seconds = time_by_kind([(n, o, 0.001) for n, o, _ in CUDA_KERNELS])
    assert list(seconds) == list(KINDS) and abs(sum(seconds.values()) - 0.001 * len(CUDA_KERNELS)) < 1e-9


def test_fp32_kernel_math_finds_tf32_and_winograd():
    names = [name for name, _, _ in CUDA_KERNELS]
    assert fp32_kernel_math(names) == {"tf32": 1, "winograd": 1}


def test_fp32_math_follows_torchs_switches():
    assert inherited(["none", "ieee", "none"], "tf32") == "ieee" and inherited(["none"], "tf32") == "tf32"
    before = torch.backends.cudnn.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    try:
        torch.backends.cudnn.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        assert fp32_math("cuda") == {"conv": "ieee", "matmul": "tf32"}
        assert fp32_math("cpu") == {"conv": "ieee", "matmul": "ieee"}  # oneDNN's own switches, untouched
    finally:
        torch.backends.cudnn.fp32_precision, torch.backends.cuda.matmul.fp32_precision = before


def test_skip_reasons():
    by_key = {c.key: c for c in TRAIN_CANDIDATES}
    assert skip_reason(by_key["fp32"], "cpu", "fp32", False) is None
    assert "TF32" in skip_reason(by_key["tf32"], "cpu", "bf16", True)
    assert skip_reason(by_key["tf32"], "cuda", "bf16", True) is None
    assert "emulated" in skip_reason(by_key["fp16"], "cpu", "bf16", True)
    assert "'auto' is fp32" in skip_reason(by_key["autocast"], "cpu", "fp32", True)
    assert "--torch_compile=False" in skip_reason(by_key["compiled"], "cuda", "bf16", False)
    assert skip_reason(by_key["compiled_regional"], "cuda", "bf16", True) is None
    graphs = {c.key: c for c in SAMPLE_CANDIDATES}["compiled_graphs"]
    assert "CUDA graphs" in skip_reason(graphs, "cpu", "bf16", True)
    assert skip_reason(Candidate("x", "x", compile="reduce-overhead"), "cuda", "bf16", True) is None


def test_gpu_profile_runs_on_the_cpu(repo_root, tmp_path):
    out = tmp_path / "gpu_profile.json"
    result = subprocess.run([sys.executable, "benchmarks/gpu_profile.py", "--device=cpu", "--torch_compile=False",
                             "--patch=16", "--repeats=1", "--matmul_size=256", "--profiled=['fp32']",
                             "--train_candidates=['fp32','tf32','autocast','compiled']",
                             "--sample_candidates=['fp32','weights_cl','compiled_graphs']", f"--json={out}"],
                            cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["settings"]["preset"] == "tiny" and report["train_gflop"] > report["sample_gflop"] > 0
    for stage in ("train", "sample"):  # (a): every kind; convolutions ran (their share is timing: not asserted)
        seconds = report["kinds"][stage]["fp32"]["seconds"]
        assert list(seconds) == list(KINDS) and seconds["conv forward"] > 0 and seconds["normalisation"] > 0
    train_kinds = report["kinds"]["train"]["fp32"]["seconds"]
    assert train_kinds["conv backward"] > 0 and train_kinds["optimizer"] > 0  # the trainer's whole step
    assert report["kinds"]["sample"]["fp32"]["seconds"]["conv backward"] == 0
    train = {row["key"]: row for row in report["sweep"]["train"]}
    assert "TF32" in train["tf32"]["skipped"] and "compile" in train["compiled"]["skipped"]
    assert train["fp32"]["seconds"] > 0 and train["fp32"]["peak_gib"] > 0
    if report["settings"]["low_precision"] == "bf16":  # a CPU with bf16 units
        assert abs(train["autocast"]["loss_rel_diff"]) < 0.02 and train["autocast"]["grad_cosine"] > 0.98
        weights = {row["key"]: row for row in report["sweep"]["sample"]}["weights_cl"]
        assert weights["argmax_agreement"] > 0.98 and weights["max_abs_prob_diff"] < 0.05
    assert "(a) training step" in result.stdout and "(b) sampling window: the sweep" in result.stdout


def test_training_compile_candidates_ask_for_whole_or_regional(monkeypatch):
    """Whatever compile_for_training's default, "whole" and "regional" ask for theirs explicitly."""
    from benchmarks import profiling
    calls = []

    def compile_for_training(model, regional: bool = True):
        calls.append(regional)
        return model

    monkeypatch.setattr(profiling, "compile_for_training", compile_for_training)
    profiling.compile_training(torch.nn.Linear(1, 1), "whole")
    profiling.compile_training(torch.nn.Linear(1, 1), "regional")
    assert calls == [False, True]
    with pytest.raises(ValueError, match="'whole' or 'regional'"):
        profiling.compile_training(torch.nn.Linear(1, 1), "blocks")


def test_kernel_records_read_a_profile():
    """The CUDA branch reads the ops' kernels (none on the CPU: an empty list, not an error); the CPU branch
    the ops' self times, sorted by kind."""
    from benchmarks.profiling import kernel_records
    x, w = torch.randn(1, 2, 8, 8, 8), torch.randn(4, 2, 3, 3, 3)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.nn.functional.leaky_relu(torch.nn.functional.conv3d(x, w, padding=1))
    assert kernel_records(prof, "cuda") == []
    seconds = time_by_kind(kernel_records(prof, "cpu"))
    assert seconds["conv forward"] > 0 and seconds["element-wise"] > 0


def test_agreement_with_the_fp32_reference():
    ref = (2.0, torch.tensor([1.0, 0.0, 0.0]))
    numbers, text = agreement_train((2.2, torch.tensor([1.0, 1.0, 0.0])), ref)
    assert numbers["loss_rel_diff"] == pytest.approx(0.1) and numbers["grad_cosine"] == pytest.approx(2 ** -0.5)
    # fp16's first step overflowed: the GradScaler skipped it; no cosine of inf
    numbers, text = agreement_train((2.0, torch.tensor([float("inf"), 0.0, 0.0])), ref)
    assert "grad_cosine" not in numbers and "skipped fp16 step" in text
    assert agreement_train((None, torch.zeros(3)), ref) == ({}, "NaN/Inf step")
    probs = torch.tensor([[0.9, 0.2], [0.1, 0.8]])  # (K, voxels)
    numbers, _ = agreement_sample(torch.tensor([[0.6, 0.6], [0.4, 0.4]]), probs)
    assert numbers["argmax_agreement"] == 0.5 and numbers["max_abs_prob_diff"] == pytest.approx(0.4)
