"""The attention registry: one entry per implementation the sweep can measure.

Contract (docs/design.md): every implementation takes ``q`` of shape ``(B, T, H, D)`` and ``k``, ``v`` of shape
``(B, T, Hkv, D)`` -- the layout the fused QKV projection produces, so the model never transposes -- is always
causal, and returns ``(B, T, H, D)``. ``H % Hkv == 0``; query head ``h`` attends with key/value head
``h // (H // Hkv)`` (the convention of flash-attn, FlexAttention and SDPA's ``enable_gqa``).

An entry declares what it can run on (devices, dtypes, head dims, compute capability, Python modules). Everything
that differs between implementations lives in its entry: no other module branches on an attention name. Optional
packages (``flash_attn``, ``flash_attn.cute``) are imported only when an entry is checked or built, never when
this module is imported, so the package works on machines without them.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["AttentionImpl", "names", "get", "build", "unsupported_reason", "REGISTRY"]

_HALF = frozenset({torch.float16, torch.bfloat16})
_FLOATS = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
# flash-attn 2 (and SDPA's flash backend, which is FA2 code) supports head dims up to 256; multiples of 8 are the
# sizes it has kernels for (it pads others, but the sweep never needs them).
_FA2_HEAD_DIMS = frozenset(range(8, 257, 8))


@dataclass(frozen=True)
class AttentionImpl:
    """One attention implementation and what it can run on.

    ``factory`` is called with keyword arguments ``n_head``, ``n_kv_head``, ``head_dim`` and ``block_size`` and
    returns an ``nn.Module`` whose ``forward(q, k, v)`` follows the module contract (a module rather than a
    function, so an implementation can hold state such as the naive mask buffer or FlexAttention's block masks).
    If ``native_gqa`` is False the factory is built with ``n_kv_head == n_head`` and :func:`build` repeats the
    k/v heads before calling it.
    """

    name: str
    description: str
    factory: Callable[..., nn.Module]
    devices: frozenset[str]
    dtypes: frozenset[torch.dtype]
    head_dims: frozenset[int] | None = None  # None: any head dim
    native_gqa: bool = False
    fullgraph: bool = True  # torch.compile(fullgraph=True) traces it without a graph break
    requires: tuple[str, ...] = ()  # modules that must import for it to run
    min_capability: tuple[int, int] | None = None  # CUDA compute capability, checked on cuda only
    # (device type, why it cannot run there): appended to the "does not run on device" sentence where the reason
    # is not obvious.
    device_notes: tuple[tuple[str, str], ...] = ()
    sdpa_backend: SDPBackend | None = None  # the SDPA backend it is restricted to (backend_scope)


# --------------------------------------------------------------------------------------------------------------
# Implementations. All take and return the (B, T, H, D) layout; the ones built on (B, H, T, D) kernels transpose
# here, which is a view (no copy) -- the kernels accept strided inputs as long as the last dim is contiguous.


class _Naive(nn.Module):
    """Standard PyTorch attention, as GPT-2 implementations wrote it before fused kernels (the study's baseline):
    materialises the (T, T) score matrix, masks the future with -inf, softmax, then multiplies by v."""

    def __init__(self, *, head_dim: int, block_size: int, **_: Any) -> None:
        super().__init__()
        self.scale = 1.0 / math.sqrt(head_dim)
        # True above the diagonal = positions to hide. Bool (1 byte/element) rather than nanoGPT's float buffer,
        # and stored inverted so the forward needs no extra comparison kernel. Not persistent: it is derived from
        # block_size and does not belong in a checkpoint. Costs block_size**2 bytes per layer.
        self.register_buffer(
            "future", torch.ones(block_size, block_size, dtype=torch.bool).triu(diagonal=1), persistent=False
        )

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        T = q.size(1)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        att = (q @ k.transpose(-2, -1)) * self.scale
        att = att.masked_fill(self.future[:T, :T], float("-inf"))
        att = F.softmax(att, dim=-1)
        return (att @ v).transpose(1, 2)


# The backend a whole training run is restricted to by backend_scope, or None.
_scoped_backend: SDPBackend | None = None


@contextlib.contextmanager
def backend_scope(name: str) -> Iterator[None]:
    """Restrict SDPA to implementation `name`'s backend (if it has one) around a whole run, outside any compiled
    region; its modules then call SDPA plainly. An ``sdpa_kernel`` block traced inside a compiled graph makes
    AOTAutograd bypass its cache, so a cell's warm compile cache would be recompiled from scratch."""
    global _scoped_backend
    backend = get(name).sdpa_backend
    if backend is None:
        yield
        return
    saved = _scoped_backend
    with sdpa_kernel(backend):
        _scoped_backend = backend
        try:
            yield
        finally:
            _scoped_backend = saved


class _SDPA(nn.Module):
    """``F.scaled_dot_product_attention(is_causal=True)``, optionally restricted to one backend.

    Inside ``backend_scope`` of the same backend (how a cell runs) the restriction is already global. Elsewhere it
    uses ``torch.nn.attention.sdpa_kernel`` as a context manager inside forward: torch.compile traces it (the old
    ``torch.backends.cuda.sdp_kernel`` breaks the graph), and it holds for eager and compiled runs alike.
    """

    def __init__(self, *, backend: SDPBackend | None, **_: Any) -> None:
        super().__init__()
        self.backend = backend

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.backend is None or self.backend == _scoped_backend:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            with sdpa_kernel(self.backend):
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return y.transpose(1, 2)


def _sdpa_entry(name: str, description: str, backend: SDPBackend | None, **kw: Any) -> AttentionImpl:
    def factory(**args: Any) -> nn.Module:
        return _SDPA(backend=backend, **args)

    return AttentionImpl(name=name, description=description, factory=factory, sdpa_backend=backend, **kw)


class _FlashAttn2(nn.Module):
    """``flash_attn.flash_attn_func(q, k, v, causal=True)``: takes (B, T, H, D) natively, handles GQA natively.

    Current flash-attn (>= 2.7) registers its kernels as torch custom ops, so torch.compile traces it as one graph.
    With ``graph_break=True`` the call is wrapped in ``torch.compiler.disable``, which forces a graph break at every
    attention layer: the condition the 2023 study measured, when flash-attn was opaque to Dynamo.
    """

    def __init__(self, *, graph_break: bool = False, **_: Any) -> None:
        super().__init__()
        from flash_attn import flash_attn_func  # lazy: optional dependency

        def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return flash_attn_func(q, k, v, causal=True)

        self._call = torch.compiler.disable(call) if graph_break else call

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self._call(q, k, v)


def _causal_mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
    return q_idx >= kv_idx


_compiled_flex_attention: Callable[..., torch.Tensor] | None = None


def _get_compiled_flex_attention() -> Callable[..., torch.Tensor]:
    # One process-wide compiled wrapper, created on first use so that importing this module compiles nothing.
    global _compiled_flex_attention
    if _compiled_flex_attention is None:
        from torch.nn.attention.flex_attention import flex_attention

        _compiled_flex_attention = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex_attention


class _Flex(nn.Module):
    """FlexAttention with a causal block mask (``enable_gqa=True``: grouped-query natively).

    FlexAttention must itself be compiled to be fast: called eagerly, ``flex_attention`` runs a reference
    implementation that materialises the full score matrix (slower than naive attention and as memory-hungry);
    only under torch.compile is it lowered to the fused Triton kernel that skips the masked blocks. So on CUDA in
    eager mode it calls a ``torch.compile``d ``flex_attention`` (only the attention is compiled; the rest of the
    model stays eager). Inside a compiled model it calls the plain function, which Dynamo traces into the model's
    graph. On CPU it calls the plain function (forward only: FlexAttention has no CPU backward, which is why the
    entry declares cuda only; the CPU path serves inference and the tests).

    The block mask is cached per (T, device). Under torch.compile the first call builds it inside the graph and
    stores it; Dynamo then recompiles once, with the cached mask as a graph input, so the steady-state graph does
    not rebuild the mask every step (the price: a compiled model with flex compiles twice, on its first two calls).
    """

    def __init__(self, **_: Any) -> None:
        super().__init__()
        # Block masks depend only on (T, device); building one costs a pass over the (T, T) mask, so cache them.
        self._block_masks: dict[tuple[int, str], Any] = {}

    def _block_mask(self, T: int, device: torch.device) -> Any:
        from torch.nn.attention.flex_attention import create_block_mask

        key = (T, str(device))
        mask = self._block_masks.get(key)
        if mask is None:
            mask = create_block_mask(_causal_mask_mod, B=None, H=None, Q_LEN=T, KV_LEN=T, device=device)
            self._block_masks[key] = mask
        return mask

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from torch.nn.attention.flex_attention import flex_attention

        block_mask = self._block_mask(q.size(1), q.device)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        fn = flex_attention
        if q.device.type == "cuda" and not torch.compiler.is_compiling():
            fn = _get_compiled_flex_attention()
        y = fn(q, k, v, block_mask=block_mask, enable_gqa=True)
        return y.transpose(1, 2)


class _FlashAttn4(nn.Module):
    """FlashAttention-4: ``flash_attn.cute.flash_attn_func`` (CuTe DSL kernels for Hopper and Blackwell).

    Its kernels are JIT-compiled by the CuTe DSL at first call and are not torch custom ops, so torch.compile
    breaks the graph around it (hence ``fullgraph=False``). It returns ``(out, lse)``; older builds returned
    ``out`` alone, so both are accepted.
    """

    def __init__(self, **_: Any) -> None:
        super().__init__()
        from flash_attn.cute import flash_attn_func  # lazy: optional dependency

        self._fn = flash_attn_func

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = self._fn(q, k, v, causal=True)
        return out[0] if isinstance(out, tuple) else out


class _RepeatKV(nn.Module):
    """Gives an implementation without native grouped-query support as many k/v heads as query heads.

    The repeat is an expand + reshape, which materialises k and v at full head count (the memory and bandwidth
    cost GQA would otherwise save); that cost is part of what such an implementation measures.
    """

    def __init__(self, inner: nn.Module, n_rep: int) -> None:
        super().__init__()
        self.inner = inner
        self.n_rep = n_rep

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.inner(q, _repeat_kv(k, self.n_rep), _repeat_kv(v, self.n_rep))


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    # (B, T, Hkv, D) -> (B, T, Hkv * n_rep, D) with head h reading kv head h // n_rep (= repeat_interleave, dim 2).
    B, T, Hkv, D = x.shape
    return x[:, :, :, None, :].expand(B, T, Hkv, n_rep, D).reshape(B, T, Hkv * n_rep, D)


# --------------------------------------------------------------------------------------------------------------
# The registry.

_CPU_CUDA = frozenset({"cpu", "cuda"})
_CUDA = frozenset({"cuda"})

_FA2 = AttentionImpl(
    name="fa2",
    description="FlashAttention-2 from the flash-attn package: flash_attn_func(q, k, v, causal=True)",
    factory=_FlashAttn2,
    devices=_CUDA,
    dtypes=_HALF,
    # What flash-attn supports. A build may ship fewer head dims (the offline Hopper wheel has only 64); that
    # cannot be probed without a GPU call, and such a build raises a clear error at the first call instead.
    head_dims=_FA2_HEAD_DIMS,
    native_gqa=True,
    requires=("flash_attn",),
    min_capability=(8, 0),
)

# SDPA entries do not pass enable_gqa: not every backend accepts it, and passing it changes what the default
# dispatch may pick. The registry repeats k/v heads instead, which every backend runs.
_ENTRIES: tuple[AttentionImpl, ...] = (
    AttentionImpl(
        name="naive",
        description="standard PyTorch attention: matmul, causal mask (masked_fill -inf), softmax, matmul; "
        "the study's baseline",
        factory=_Naive,
        devices=_CPU_CUDA,
        dtypes=_FLOATS,
    ),
    _sdpa_entry(
        "sdpa",
        "F.scaled_dot_product_attention(is_causal=True), PyTorch's default backend choice",
        None,
        devices=_CPU_CUDA,
        dtypes=_FLOATS,
    ),
    _sdpa_entry(
        "sdpa_flash",
        "SDPA restricted to its FlashAttention(-2) backend",
        SDPBackend.FLASH_ATTENTION,
        devices=_CUDA,
        dtypes=_HALF,
        head_dims=_FA2_HEAD_DIMS,
        min_capability=(8, 0),
    ),
    _sdpa_entry(
        "sdpa_efficient",
        "SDPA restricted to its memory-efficient (xFormers/CUTLASS) backend",
        SDPBackend.EFFICIENT_ATTENTION,
        devices=_CUDA,
        dtypes=frozenset({torch.float16, torch.bfloat16, torch.float32}),
        min_capability=(5, 0),
    ),
    _sdpa_entry(
        "sdpa_cudnn",
        "SDPA restricted to its cuDNN attention backend",
        SDPBackend.CUDNN_ATTENTION,
        devices=_CUDA,
        dtypes=_HALF,
        head_dims=frozenset(range(8, 129, 8)),
        min_capability=(8, 0),
    ),
    _sdpa_entry(
        "sdpa_math",
        "SDPA restricted to its math backend (the unfused reference composition)",
        SDPBackend.MATH,
        devices=_CPU_CUDA,
        dtypes=_FLOATS,
    ),
    _FA2,
    # The 2023 condition: the same kernel, but Dynamo must leave the graph at every attention layer.
    replace(
        _FA2,
        name="fa2_graphbreak",
        description="FlashAttention-2 wrapped in torch.compiler.disable: a graph break at every attention layer, "
        "as flash-attn forced in 2023",
        factory=lambda **kw: _FlashAttn2(graph_break=True, **kw),
        fullgraph=False,
    ),
    AttentionImpl(
        name="flex",
        description="FlexAttention with a causal block mask (compiled; on CUDA in eager mode the attention alone "
        "is compiled)",
        factory=_Flex,
        devices=_CUDA,
        device_notes=(
            (
                "cpu",
                "PyTorch's FlexAttention has no backward pass on CPU (it raises NotImplementedError), "
                "and the sweep trains",
            ),
        ),
        dtypes=frozenset({torch.float16, torch.bfloat16, torch.float32}),
        # On CUDA its Triton kernel wants a power-of-two head dim >= 16 (newer PyTorch pads others).
        head_dims=frozenset({16, 32, 64, 128, 256}),
        native_gqa=True,
        requires=("torch.nn.attention.flex_attention",),
        min_capability=(8, 0),  # Triton's supported NVIDIA GPUs
    ),
    AttentionImpl(
        name="fa4",
        description="FlashAttention-4 (flash_attn.cute.flash_attn_func, CuTe DSL kernels for Hopper/Blackwell)",
        factory=_FlashAttn4,
        devices=_CUDA,
        dtypes=_HALF,
        head_dims=frozenset({64, 96, 128}),
        native_gqa=True,
        fullgraph=False,
        requires=("flash_attn.cute",),
        min_capability=(9, 0),
    ),
)

REGISTRY: dict[str, AttentionImpl] = {e.name: e for e in _ENTRIES}


def names() -> list[str]:
    """All implementation names, in registry order."""
    return list(REGISTRY)


def get(name: str) -> AttentionImpl:
    """The entry called ``name``; ValueError listing the allowed names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown attention implementation {name!r}; allowed: {', '.join(REGISTRY)}") from None


def _check_heads(n_head: int, n_kv_head: int) -> None:
    if n_kv_head < 1 or n_head < 1 or n_head % n_kv_head != 0:
        raise ValueError(f"n_kv_head ({n_kv_head}) must be >= 1 and divide n_head ({n_head})")


def kv_heads_handling(name: str, *, n_head: int, n_kv_head: int) -> str:
    """How implementation `name` runs `n_kv_head` key/value heads for `n_head` query heads (what :func:`build`
    does): `native` (the kernel takes grouped heads), `repeated` (keys and values repeated to every query head before
    the call) or `multi-head` (as many key/value heads as query heads: nothing to handle)."""
    if n_kv_head == n_head:
        return "multi-head"
    return "native" if get(name).native_gqa else "repeated"


def build(name: str, *, n_head: int, n_kv_head: int, head_dim: int, block_size: int) -> nn.Module:
    """An attention module for one layer: ``forward(q (B,T,H,D), k (B,T,Hkv,D), v (B,T,Hkv,D)) -> (B,T,H,D)``.

    Does not check support (see :func:`unsupported_reason`); an implementation whose package is missing raises
    ImportError here.
    """
    impl = get(name)
    _check_heads(n_head, n_kv_head)
    n_rep = n_head // n_kv_head
    if impl.native_gqa or n_rep == 1:
        return impl.factory(n_head=n_head, n_kv_head=n_kv_head, head_dim=head_dim, block_size=block_size)
    inner = impl.factory(n_head=n_head, n_kv_head=n_head, head_dim=head_dim, block_size=block_size)
    return _RepeatKV(inner, n_rep)


def _import_error(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 -- a broken build can raise OSError/RuntimeError too, not only ImportError
        return f"{type(e).__name__}: {e}"
    return None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def unsupported_reason(
    name: str,
    *,
    device_type: str,
    dtype: torch.dtype,
    head_dim: int,
    n_head: int,
    n_kv_head: int,
    capability: tuple[int, int] | None = None,
) -> str | None:
    """None if ``name`` can run on this combination, else one sentence saying why not.

    Checked in this order: device, dtype, head dim, required modules (with the import error), compute capability.
    ``capability`` is the CUDA device's (major, minor); if None on a machine with CUDA, the current device's is
    used, and without CUDA the capability is not checked. Unknown names and invalid head counts raise ValueError
    (configuration errors, not "unsupported").
    """
    impl = get(name)
    _check_heads(n_head, n_kv_head)
    if device_type not in impl.devices:
        note = dict(impl.device_notes).get(device_type)
        return (
            f"{name} does not run on device {device_type!r} (it runs on: {', '.join(sorted(impl.devices))})"
            + (f": {note}." if note else ".")
        )
    if dtype not in impl.dtypes:
        allowed = ", ".join(sorted(_dtype_name(d) for d in impl.dtypes))
        return f"{name} does not support dtype {_dtype_name(dtype)} (it supports: {allowed})."
    if impl.head_dims is not None and head_dim not in impl.head_dims:
        dims = sorted(impl.head_dims)
        if len(dims) <= 8:
            shown = ", ".join(map(str, dims))
        else:
            shown = f"{dims[0]}..{dims[-1]} in steps of {dims[1] - dims[0]}"
        return f"{name} does not support head dim {head_dim} (it supports: {shown})."
    for module in impl.requires:
        err = _import_error(module)
        if err is not None:
            return f"{name} needs the Python module {module!r}, which does not import ({err})."
    if device_type == "cuda" and impl.min_capability is not None:
        if capability is None and torch.cuda.is_available():
            capability = torch.cuda.get_device_capability()
        if capability is not None and tuple(capability) < impl.min_capability:
            need = "sm%d%d" % impl.min_capability
            have = "sm%d%d" % tuple(capability)
            return f"{name} needs a GPU of compute capability {need} or newer; this one is {have}."
    return None
