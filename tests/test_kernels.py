"""The kernel listing of a profiled step: which of the ops that ran are attention's."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from attnsweep.kernels import FA4_VIA_SDPA, attention_share, classify, is_attention, profile_step
from attnsweep.model import GPT, model_config


def test_loss_softmax_is_not_attention() -> None:
    assert not is_attention("aten::_log_softmax")
    assert not is_attention("void cunn_SoftMaxForward<4, float, float, float, LogSoftMaxForwardEpilogue>(...)")
    assert not is_attention("triton_red_fused__log_softmax_nll_loss_forward_0")
    assert is_attention("aten::_softmax") and is_attention("aten::_scaled_dot_product_flash_attention")


def test_naive_step_lists_attention_softmax_and_not_the_loss() -> None:
    torch.manual_seed(0)
    model = GPT(model_config("tiny", block_size=32), attn="naive")
    idx = torch.randint(0, model.config.vocab_size, (2, 32))

    def step() -> None:
        _, loss = model(idx, idx)
        loss.backward()

    kernels = profile_step(step, torch.device("cpu"))
    names = [r["name"] for r in kernels["attention"]]
    assert "aten::softmax" in names
    assert not [n for n in names if "log_softmax" in n], names
    assert kernels["backend"] == classify(names) == "unfused (matmul + softmax)"
    # Attention's part of the step: some, not all (the naive path's matmuls are not told apart from the others).
    assert 0 < kernels["attention_share"] < 1
    # The step's busy time (here the operators' self time) holds attention's.
    assert kernels["busy_us"] > sum(r["time_us"] for r in kernels["attention"]) > 0


def test_attention_share_counts_kernels_once() -> None:
    rows = [{"name": "Optimizer.step#AdamW.step", "time_us": 300.0},  # spans the two optimizer kernels below
            {"name": "multi_tensor_apply_kernel<AdamW>", "time_us": 250.0},
            {"name": "multi_tensor_apply_kernel<Scale>", "time_us": 50.0},
            {"name": "pytorch_flash::flash_fwd_kernel", "time_us": 200.0},
            {"name": "sm90_xmma_gemm", "time_us": 400.0},
            {"name": "triton_red_fused__log_softmax_nll_loss_forward_0", "time_us": 100.0}]  # the loss: not attention
    assert attention_share(rows, {"Optimizer.step#AdamW.step"}) == 0.2
    assert attention_share([]) is None


def test_profiling_on_the_cpu_prints_no_cuda_probe_error() -> None:
    """A CUDA build of torch on a machine without a GPU: the profiler must not log a CUDA error under a CPU cell."""
    code = (
        "import torch\n"
        "from attnsweep.kernels import profile_step\n"
        "profile_step(lambda: torch.ones(8).sum(), torch.device('cpu'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "gpuGetDeviceCount" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr


# flash-attn-4 4.0.0b18's Hopper kernels as the CuTe DSL names them (kernel_cutlass_<method>_<the kernel object's str
# without '.', '<', '>' and its address>_<argument layouts>_<n>): the .entry names of the PTX it compiled for sm_90a
# (head dim 64, bf16, grouped kv heads; compiled without a GPU, in fake-tensor mode).
FA4_SM90_KERNELS = [
    "kernel_cutlass_kernel_flash_attncuteflash_fwd_sm90FlashAttentionForwardSm90_object_at__tensor0000o21112102113_"
    "tensor0000o11101213_tensor0000o11101213_tensor0000o21112102113_tensorptrf32_g_0",
    "kernel_cutlass_kernel_flash_attncuteflash_bwd_preprocessFlashAttentionBackwardPreprocess_object_at__tensorptrb"
    "f16gmemalign16oi64div8i64div8i64div81_tensorptrbf16gmemalign16oi64div8i64div8_0",
    "kernel_cutlass_kernel_flash_attncuteflash_bwd_sm90FlashAttentionBackwardSm90_object_at__tensor0000o11101213_te"
    "nsor0000o11101213_tensor0000o11101213_tensor0000o11101213_tensorptrf32gmemali_0",
    "kernel_cutlass_kernel_flash_attncuteflash_bwd_postprocessFlashAttentionBackwardPostprocess_object_at__tensorptr"
    "f32gmemalign16oi64div4i64div41_tensorptrbf16gmemalign16oi64div8i64div8i64div_0",
]
# Blackwell's forward, by the same rule (not compiled here).
FA4_SM100_KERNEL = (
    "kernel_cutlass_kernel_flash_attncuteflash_fwd_sm100FlashAttentionForwardSm100_object_at__tensorptrbf16gmemalig"
    "n16o1024641_0"
)


def test_flash_attn_4_kernels_and_their_route() -> None:
    assert all(is_attention(n) for n in FA4_SM90_KERNELS)
    assert classify(FA4_SM90_KERNELS) == "flash-attn-4"
    assert classify([FA4_SM100_KERNEL]) == "flash-attn-4"
    # Called directly: through this package's custom ops (fa4) or flash-attn-4's autograd.Function (fa4_graphbreak).
    direct = ["attnsweep::flash_attn_4_fwd", "attnsweep::flash_attn_4_bwd", "FlashAttnFuncBackward"]
    assert classify(FA4_SM90_KERNELS, direct) == "flash-attn-4"
    # Through SDPA's flash operator with PyTorch's FA4 implementation activated (sdpa_fa4).
    via_sdpa = ["aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention",
                "aten::_scaled_dot_product_flash_attention_backward"]
    assert classify(FA4_SM90_KERNELS, via_sdpa) == FA4_VIA_SDPA
    # SDPA's own flash kernels stay PyTorch's flash, whatever the operators.
    assert classify(["void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>>(...)"],
                    via_sdpa) == "pytorch-flash"
    # flash-attn 2's kernels are not flash-attn-4's.
    assert classify(["void flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4, false, false, "
                     "cutlass::bfloat16_t>>(Flash_fwd_params)"]) == "flash-attn"
