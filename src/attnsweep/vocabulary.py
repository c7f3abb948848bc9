"""The sweep's vocabulary: the axes of the grid, the values each axis may take, and the shapes of the models.

One source for the config schema, the cell schema, the CLI, the attention registry, the aggregation and the tests
(tests/test_vocabulary.py checks each against this module). It imports nothing heavy, so Snakemake can read it when
it parses the workflow without starting torch.
"""

from __future__ import annotations

from dataclasses import dataclass

# The axes of the grid, in the order of a cell's folders (model~small/seq_len~1024/attn~sdpa/...).
AXES: tuple[str, ...] = ("model", "seq_len", "attn", "mode", "kv_heads", "precision", "optimizer", "harness")


@dataclass(frozen=True)
class ModelShape:
    """A GPT-2 size (docs/protocol.md, The models); the context length and key/value heads are per cell."""

    n_layer: int
    n_embd: int
    n_head: int


MODELS: dict[str, ModelShape] = {
    "tiny": ModelShape(n_layer=2, n_embd=64, n_head=4),  # head dim 16: tests and the CPU demo
    "small": ModelShape(n_layer=12, n_embd=768, n_head=12),
    "medium": ModelShape(n_layer=24, n_embd=1024, n_head=16),
    "large": ModelShape(n_layer=36, n_embd=1280, n_head=20),
}
# In the attention registry's order; the registry (attention.REGISTRY) has exactly these entries.
ATTENTION: tuple[str, ...] = (
    "naive", "sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "sdpa_math", "fa2", "fa2_graphbreak", "flex", "fa4",
    "fa4_graphbreak", "sdpa_fa4",
)
# Attention that keeps the context-by-context scores for the backward: its memory grows with the square of the
# context, where the others' grows linearly. A batch search places its first attempt from the peak of another
# attention of the same kind only (cell.placing_record).
QUADRATIC_MEMORY: tuple[str, ...] = ("naive", "sdpa_math")
# Mode -> torch.compile's own `mode` argument (None: eager, no torch.compile). torch.compile's default mode launches
# every kernel from the host; "reduce-overhead" records each compiled forward and backward region as a CUDA graph
# (CUDA graph trees) and replays it with one launch: what a single CUDA graph saves over the default.
TORCH_COMPILE_MODES: dict[str, str | None] = {
    "eager": None, "compiled": "default", "compiled_cudagraphs": "reduce-overhead",
}
MODES: tuple[str, ...] = tuple(TORCH_COMPILE_MODES)
COMPILED_MODES: tuple[str, ...] = tuple(m for m, c in TORCH_COMPILE_MODES.items() if c is not None)
CUDAGRAPH_MODES: tuple[str, ...] = tuple(m for m, c in TORCH_COMPILE_MODES.items() if c == "reduce-overhead")
# Precision name -> the torch dtype of its autocast (fp32 trains without autocast).
PRECISION_DTYPES: dict[str, str] = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
PRECISIONS: tuple[str, ...] = tuple(PRECISION_DTYPES)
OPTIMIZERS: tuple[str, ...] = ("adamw", "adamw8bit", "adamw_fused")
HARNESSES: tuple[str, ...] = ("native", "composer")
BATCH_POLICIES: tuple[str, ...] = ("fixed", "study", "search", "tokens")
DEVICES: tuple[str, ...] = ("auto", "cuda", "cpu")
# How a cell runs its batch attempts: auto = in a fresh process on a GPU, in this one on the CPU.
ISOLATION: tuple[str, ...] = ("auto", "process", "inline")
STATUSES: tuple[str, ...] = ("ok", "oom", "unsupported", "diverged", "error")
ATTEMPT_OUTCOMES: tuple[str, ...] = ("ok", "oom", "diverged", "error")

# The allowed values of every axis with a closed set of values (seq_len and kv_heads are positive integers).
CHOICES: dict[str, tuple[str, ...]] = {
    "model": tuple(MODELS),
    "attn": ATTENTION,
    "mode": MODES,
    "precision": PRECISIONS,
    "optimizer": OPTIMIZERS,
    "harness": HARNESSES,
}


def kv_heads_problem(model: str, kv_heads: int | None) -> str | None:
    """Why `kv_heads` key/value heads cannot serve `model`'s query heads, or None (None kv_heads = as many as heads)."""
    n_head = MODELS[model].n_head
    if kv_heads is None:
        return None
    if kv_heads < 1 or n_head % kv_heads:
        return f"kv_heads ({kv_heads}) must be >= 1 and divide the {n_head} heads of model {model!r}"
    return None


def memory_kind(attn: str) -> str:
    """How an attention's memory grows with the context: "quadratic" (QUADRATIC_MEMORY) or "linear"."""
    return "quadratic" if attn in QUADRATIC_MEMORY else "linear"
