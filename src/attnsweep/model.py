"""GPT-2, nanoGPT-style, with the study's changes: vocabulary 16,384, no bias in any Linear, no dropout.

Learned positions, pre-LayerNorm blocks (LayerNorms keep their bias), GELU MLP of 4x width, causal self-attention,
final LayerNorm, tied input/output embeddings. Key/value heads are a parameter: fewer than the query heads gives
grouped-query attention, one gives multi-query. The attention itself comes from the registry
(:mod:`attnsweep.attention`), so this file never branches on an attention implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from attnsweep import attention
from attnsweep.vocabulary import MODELS, kv_heads_problem

__all__ = ["GPTConfig", "MODEL_CONFIGS", "model_config", "GPT", "closed_form_params"]


@dataclass(frozen=True, kw_only=True)
class GPTConfig:
    n_layer: int
    n_embd: int
    n_head: int
    n_kv_head: int | None = None  # None: as many key/value heads as query heads (plain multi-head attention)
    vocab_size: int = 16384
    block_size: int  # maximum context length (sizes the position embedding)

    def __post_init__(self) -> None:
        if min(self.n_layer, self.n_embd, self.n_head, self.block_size, self.vocab_size) < 1:
            raise ValueError(f"every size in {self} must be >= 1")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.n_kv_head is not None and (self.n_kv_head < 1 or self.n_head % self.n_kv_head != 0):
            raise ValueError(f"n_kv_head ({self.n_kv_head}) must be >= 1 and divide n_head ({self.n_head})")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head


# block_size here is a placeholder: model_config() sets the context length of each run.
MODEL_CONFIGS: dict[str, GPTConfig] = {
    name: GPTConfig(n_layer=m.n_layer, n_embd=m.n_embd, n_head=m.n_head, block_size=1024) for name, m in MODELS.items()
}


def model_config(name: str, *, block_size: int, kv_heads: int | None = None) -> GPTConfig:
    """The named model at context length ``block_size``, with ``kv_heads`` key/value heads (None: = heads)."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODEL_CONFIGS)}")
    problem = kv_heads_problem(name, kv_heads)
    if problem:
        raise ValueError(problem)
    return replace(MODEL_CONFIGS[name], block_size=block_size, n_kv_head=kv_heads)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, attn: str) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        # One fused projection to q (H heads) then k and v (Hkv heads each): one GEMM instead of three.
        self.c_attn = nn.Linear(config.n_embd, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=False)
        self.c_proj = nn.Linear(self.n_head * self.head_dim, config.n_embd, bias=False)
        self.attn = attention.build(
            attn,
            n_head=self.n_head,
            n_kv_head=self.n_kv_head,
            head_dim=self.head_dim,
            block_size=config.block_size,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.c_attn(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
        # Views, not copies: (B, T, H, D) is the layout the projection produces and the registry's contract, so the
        # model does no transposes; implementations that want (B, H, T, D) make a strided view themselves.
        y = self.attn(q.view(B, T, H, D), k.view(B, T, Hkv, D), v.view(B, T, Hkv, D))
        return self.c_proj(y.reshape(B, T, H * D))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, attn: str) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)  # LayerNorms keep their bias (GPT-2, the study)
        self.attn = CausalSelfAttention(config, attn)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, attn: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.attn_name = attention.get(attn).name  # fail early, with the allowed names, on a typo
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                h=nn.ModuleList([Block(config, attn) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Tied input/output embeddings: one (V, C) matrix, counted once.
        self.transformer.wte.weight = self.lm_head.weight

        self.apply(self._init_weights)
        # GPT-2's scaled init of the projections that write into the residual stream, so its variance does not
        # grow with depth: 2 residual additions per layer.
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied embedding counted once); ``non_embedding`` subtracts the position embedding
        (nanoGPT's convention: the token embedding stays, since it is also the output layer's weight)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``idx`` (B, T) token ids -> logits (B, T, V) and, given ``targets`` (B, T), the mean cross-entropy over
        all positions."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T))
        return logits, loss


def closed_form_params(config: GPTConfig) -> int:
    """Parameter count of ``GPT(config)`` by formula (tied embeddings counted once)."""
    C, L, V, D = config.n_embd, config.n_layer, config.vocab_size, config.head_dim
    H, Hkv = config.n_head, config.kv_heads
    embeddings = V * C + config.block_size * C  # token (shared with the output layer) + position
    attn = C * (H + 2 * Hkv) * D + H * D * C  # fused QKV + output projection, no biases
    mlp = 2 * C * 4 * C  # c_fc + c_proj, no biases
    layernorms = 2 * 2 * C  # ln_1, ln_2: weight + bias
    return embeddings + L * (attn + mlp + layernorms) + 2 * C  # + ln_f
