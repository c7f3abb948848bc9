"""Model FLOPs utilization (MFU): the formula and the peaks, stated so every number can be checked.

FLOPs per token = 6·N + 12·L·H·Dh·T (PaLM appendix B, as in nanoGPT's `estimate_mfu`), where N is the parameter
count without the position embedding, L layers, H query heads, Dh head dim, T context length. The attention term
counts the full T×T score matrix (no causal discount), the usual convention, so MFU is comparable with nanoGPT's.
MFU = tokens/s × FLOPs per token / peak dense FLOP/s of the GPU at the training precision. The summaries give it
also with the attention term halved (CAUSAL_FORMULA), the work causal attention does, which is lower at long contexts.
"""

from __future__ import annotations

FORMULA = "6*N + 12*L*H*Dh*T per token (PaLM/nanoGPT; N excludes position embeddings; no causal discount)"
# The same with the attention term halved: a causal kernel computes about half of the T×T scores, so at long contexts
# FORMULA counts work no kernel does (GPT-2 small at 16,384: 76% of its FLOPs a token are the attention term).
CAUSAL_FORMULA = "6*N + 6*L*H*Dh*T per token (the attention term halved: the work causal attention does)"

# Dense tensor-core peaks, FLOP/s, from the vendors' datasheets (without sparsity). Matched on the device name.
_PEAKS_16BIT: list[tuple[str, float, str]] = [
    ("H100 PCIe", 756e12, "H100 PCIe datasheet, dense FP16/BF16"),
    ("H100 NVL", 835e12, "H100 NVL datasheet, dense FP16/BF16"),
    ("H100", 989e12, "H100 SXM datasheet, dense FP16/BF16"),
    ("H200", 989e12, "H200 SXM datasheet, dense FP16/BF16"),
    ("A100", 312e12, "A100 datasheet, dense FP16/BF16"),
    ("RTX 3080 Ti", 68e12, "RTX 3080 Ti (GA102), dense FP16 with FP32 accumulate, approx."),
]


def flops_per_token(*, n_params_non_embedding: int, n_layer: int, n_head: int, head_dim: int, seq_len: int) -> int:
    """Training FLOPs per token: forward and backward, the formula in FORMULA."""
    return 6 * n_params_non_embedding + 12 * n_layer * n_head * head_dim * seq_len


def causal_flops_per_token(*, n_params_non_embedding: int, n_layer: int, n_head: int, head_dim: int,
                           seq_len: int) -> int:
    """Training FLOPs per token that causal attention does: the formula in CAUSAL_FORMULA."""
    return 6 * n_params_non_embedding + 6 * n_layer * n_head * head_dim * seq_len


def peak_flops(device_name: str | None, precision: str) -> tuple[float | None, str]:
    """(peak FLOP/s, where it comes from), or (None, why there is none)."""
    if device_name is None:
        return None, "no GPU: MFU is not defined against a CPU peak here"
    if precision not in ("fp16", "bf16"):
        return None, f"no {precision} peak recorded: MFU is given for fp16/bf16 training only"
    for key, value, source in _PEAKS_16BIT:
        if key in device_name:
            return value, source
    return None, f"no peak recorded for {device_name!r}"


def mfu(tokens_per_sec: float | None, flops_token: int, peak: float | None) -> float | None:
    """Fraction of the peak the training run achieved."""
    if tokens_per_sec is None or peak is None:
        return None
    return tokens_per_sec * flops_token / peak
