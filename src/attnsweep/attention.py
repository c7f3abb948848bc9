"""The attention registry: one entry per implementation the sweep can measure.

Contract (docs/design.md): every implementation takes ``q`` of shape ``(B, T, H, D)`` and ``k``, ``v`` of shape
``(B, T, Hkv, D)`` -- the layout the fused QKV projection produces, so the model never transposes -- is always
causal, and returns ``(B, T, H, D)``. ``H % Hkv == 0``; query head ``h`` attends with key/value head
``h // (H // Hkv)`` (the convention of flash-attn, FlexAttention and SDPA's ``enable_gqa``).

An entry declares what it can run on (devices, dtypes, head dims, compute capability, Python modules, and any
installation check of its own, such as package versions). Everything that differs between implementations lives in
its entry: no other module branches on an attention name. Optional packages (``flash_attn``, ``flash_attn.cute``)
are imported only when an entry is checked or built, never when this module is imported, so the package works on
machines without them.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.torch_version import TorchVersion

__all__ = ["AttentionImpl", "names", "get", "build", "unsupported_reason", "REGISTRY"]

_HALF = frozenset({torch.float16, torch.bfloat16})
_FLOATS = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
# flash-attn 2 (and SDPA's flash backend, which is FA2 code) supports head dims up to 256; multiples of 8 are the
# sizes it has kernels for (it pads others, but the sweep never needs them).
_FA2_HEAD_DIMS = frozenset(range(8, 257, 8))
# flash-attn-4 runs head dims 8..256 (multiples of 8 in 16-bit) on Hopper but only up to 128 (plus a few special
# shapes) on Blackwell (interface._validate_head_dims): the range both take.
_FA4_HEAD_DIMS = frozenset(range(8, 129, 8))


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
    # PyTorch's flash attention implementation activated around a run (backend_scope), e.g. "FA4": the name for
    # torch.nn.attention.activate_flash_attention_impl. None: PyTorch's default (its own FlashAttention-2 code).
    flash_impl: str | None = None
    # An installation check of its own, run after the generic ones with the CUDA device's (major, minor) or None:
    # one sentence saying why it cannot run (e.g. the versions of two packages that do not work together), or None.
    check: Callable[[tuple[int, int] | None], str | None] | None = None


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
# PyTorch's flash attention implementation backend_scope activated for a whole run, or None.
_scoped_flash_impl: str | None = None


@contextlib.contextmanager
def backend_scope(name: str) -> Iterator[None]:
    """Restrict SDPA to implementation `name`'s backend, and activate its flash attention implementation (if it has
    them), around a whole run, outside any compiled region; its modules then call SDPA plainly. An ``sdpa_kernel``
    block traced inside a compiled graph makes AOTAutograd bypass its cache, so a cell's warm compile cache would be
    recompiled from scratch; and a flash implementation must stay active until the last backward has run."""
    impl = get(name)
    with contextlib.ExitStack() as stack:
        if impl.sdpa_backend is not None:
            stack.enter_context(_sdpa_backend_scope(impl.sdpa_backend))
        if impl.flash_impl is not None:
            stack.enter_context(_flash_impl_scope(impl.flash_impl))
        yield


@contextlib.contextmanager
def _sdpa_backend_scope(backend: SDPBackend) -> Iterator[None]:
    global _scoped_backend
    saved = _scoped_backend
    with sdpa_kernel(backend):
        _scoped_backend = backend
        try:
            yield
        finally:
            _scoped_backend = saved


@contextlib.contextmanager
def _flash_impl_scope(flash_impl: str) -> Iterator[None]:
    """Activate PyTorch's flash attention implementation `flash_impl` (torch >= 2.11): it re-registers the CUDA
    kernels of SDPA's flash backend (aten::_scaled_dot_product_flash_attention and its backward) process-wide, so
    eager and compiled code alike then run it. Afterwards the implementation active before is restored (PyTorch's
    default FlashAttention-2 code when there was none)."""
    global _scoped_flash_impl
    from torch.nn import attention as nn_attention

    before = nn_attention.current_flash_attention_impl()
    saved = _scoped_flash_impl
    nn_attention.activate_flash_attention_impl(flash_impl)
    _scoped_flash_impl = flash_impl
    try:
        yield
    finally:
        _scoped_flash_impl = saved
        if before is None:
            nn_attention.restore_flash_attention_impl()
        else:
            nn_attention.activate_flash_attention_impl(before)


class _SDPA(nn.Module):
    """``F.scaled_dot_product_attention(is_causal=True)``, optionally restricted to one backend.

    Inside ``backend_scope`` of the same backend (how a cell runs) the restriction is already global. Elsewhere it
    uses ``torch.nn.attention.sdpa_kernel`` as a context manager inside forward: torch.compile traces it (the old
    ``torch.backends.cuda.sdp_kernel`` breaks the graph), and it holds for eager and compiled runs alike.

    A flash attention implementation (``flash_impl``) has no such local form: activating one re-registers kernels
    process-wide, and it must still be active when the backward runs. So such a module runs only inside
    ``backend_scope`` of its entry; elsewhere it raises rather than silently run PyTorch's default flash kernels.
    """

    def __init__(self, *, backend: SDPBackend | None, flash_impl: str | None = None, **_: Any) -> None:
        super().__init__()
        self.backend = backend
        self.flash_impl = flash_impl

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.flash_impl is not None and self.flash_impl != _scoped_flash_impl:
            raise RuntimeError(
                f"SDPA with PyTorch's {self.flash_impl} flash implementation runs only inside "
                "attention.backend_scope(name), which activates it for the forward and backward passes"
            )
        # Fewer key/value heads than query heads reach here only for an entry with native GQA (see the registry):
        # SDPA's enable_gqa. Multi-head calls pass nothing new, so they dispatch exactly as before.
        gqa = {"enable_gqa": True} if k.size(2) != q.size(2) else {}
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.backend is None or self.backend == _scoped_backend:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa)
        else:
            with sdpa_kernel(self.backend):
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa)
        return y.transpose(1, 2)


def _sdpa_entry(
    name: str, description: str, backend: SDPBackend | None, flash_impl: str | None = None, **kw: Any
) -> AttentionImpl:
    def factory(**args: Any) -> nn.Module:
        return _SDPA(backend=backend, flash_impl=flash_impl, **args)

    return AttentionImpl(
        name=name, description=description, factory=factory, sdpa_backend=backend, flash_impl=flash_impl, **kw
    )


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

    The block mask is cached per (T, device) and built when the module is, for the model's context on the device
    it is built on (GPT is built under ``torch.device``): a compiled model then traces one graph with the cached
    mask as an input. A mask first needed inside a compiled call (another T or device) is built in that graph and
    stored, and Dynamo recompiles once with it as an input: the same steady-state graph, after a second compile.
    """

    def __init__(self, *, block_size: int | None = None, **_: Any) -> None:
        super().__init__()
        # Block masks depend only on (T, device); building one costs a pass over the (T, T) mask, so cache them.
        self._block_masks: dict[tuple[int, str], Any] = {}
        if block_size is not None:
            self._block_mask(block_size, torch.get_default_device())

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


# --------------------------------------------------------------------------------------------------------------
# FlashAttention-4: the flash-attn-4 package's CuTe DSL kernels (JIT-compiled at their first call), imported as
# ``flash_attn.cute``. Its own ``flash_attn_func`` is a torch.autograd.Function whose forward Dynamo cannot trace,
# so `fa4` calls the package's lower-level forward and backward through two torch custom ops of its own instead,
# which torch.compile keeps in one graph; `fa4_graphbreak` calls ``flash_attn_func`` as it is.

_FA4_DIST = "flash-attn-4"
# The module whose _flash_attn_fwd/_flash_attn_bwd the custom ops call (and torch's own FA4 route imports).
_FA4_INTERFACE = "flash_attn.cute.interface"


def _fa4_interface() -> Any:
    """flash-attn-4's interface module, imported at the first use (tests replace it with a CPU stand-in)."""
    return importlib.import_module(_FA4_INTERFACE)


@torch.library.custom_op("attnsweep::flash_attn_4_fwd", mutates_args=())
def _fa4_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal FA4 forward of (B, T, H, D), (B, T, Hkv, D) x2: (out (B, T, H, D), lse (B, H, T) float32)."""
    # return_lse: inside a custom op no input requires grad, and the package then skips the lse the backward needs.
    # 4.0.0b18 and older return (out, lse); later betas append intermediates (4.0.0b36: p, row_max, o_lo).
    out, lse = _fa4_interface()._flash_attn_fwd(q, k, v, causal=True, return_lse=True)[:2]
    return out, lse


@_fa4_fwd.register_fake
def _fa4_fwd_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # What the package allocates: a contiguous output and a contiguous float32 lse.
    B, T, H, _ = q.shape
    return q.new_empty(B, T, H, v.size(-1)), q.new_empty(B, H, T, dtype=torch.float32)


@torch.library.custom_op("attnsweep::flash_attn_4_bwd", mutates_args=())
def _fa4_bwd(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal FA4 backward: (dq, dk, dv), shaped as q, k, v (k and v with their own, grouped, head count)."""
    dq, dk, dv = _fa4_interface()._flash_attn_bwd(q, k, v, out, dout, lse, causal=True)[:3]
    # Contiguous, as the fake says: the package allocates them with empty_like, which would keep a dense but
    # permuted input's strides (a no-op for the strided views the model passes, whose gradients come back dense).
    return dq.contiguous(), dk.contiguous(), dv.contiguous()


@_fa4_bwd.register_fake
def _fa4_bwd_fake(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _fa4_setup_context(ctx: Any, inputs: tuple[torch.Tensor, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    q, k, v = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.mark_non_differentiable(lse)


def _fa4_backward(ctx: Any, dout: torch.Tensor, _dlse: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    q, k, v, out, lse = ctx.saved_tensors
    return _fa4_bwd(dout, q, k, v, out, lse)


_fa4_fwd.register_autograd(_fa4_backward, setup_context=_fa4_setup_context)


def _fa4_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _fa4_fwd(q, k, v)[0]


class _FlashAttn4(nn.Module):
    """FlashAttention-4 (flash-attn-4: CuTe DSL kernels for Hopper and Blackwell), causal, GQA native.

    By default through this module's custom ops (no graph break). With ``graph_break=True`` it calls the package's
    ``flash_attn.cute.flash_attn_func`` wrapped in ``torch.compiler.disable``: a graph break at every attention
    layer, as `fa2_graphbreak` forces for FlashAttention-2 (left to itself, Dynamo would try to trace into the
    package's autograd.Function and its CuTe DSL code). ``flash_attn_func`` returns ``(out, lse)``; a build that
    returns ``out`` alone is accepted too.
    """

    def __init__(self, *, graph_break: bool = False, **_: Any) -> None:
        super().__init__()
        if graph_break:
            from flash_attn.cute import flash_attn_func  # lazy: optional dependency

            def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
                out = flash_attn_func(q, k, v, causal=True)
                return out[0] if isinstance(out, tuple) else out

            self._call = torch.compiler.disable(call)
        else:
            _fa4_interface()  # a missing package fails here, when the model is built, as for the other packages
            self._call = _fa4_attention

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self._call(q, k, v)


def kernel_cache_env(cache_dir: str | os.PathLike) -> dict[str, str]:
    """Environment that makes the kernel packages which compile their kernels at the first call keep them in a
    cell's own cache (`cache_dir`), so that its timed job loads what its warm-up compiled instead of compiling it
    again: flash-attn-4's CuTe DSL kernels (fa4, fa4_graphbreak and sdpa_fa4 call the same ones), which the package
    keys by the kernel's settings and a fingerprint of its sources and of the DSL's version. The package reads it
    when it is imported, so it is set before anything imports it."""
    return {"FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED": "1",
            "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR": os.path.join(os.fspath(cache_dir), "flash_attn_cute")}


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _fa4_install_problem(capability: tuple[int, int] | None = None) -> str | None:
    """Why ``flash_attn.cute`` (which imports) is not a FlashAttention-4 release, or None."""
    if _dist_version(_FA4_DIST) is None:
        # flash-attn 2's wheels ship an early, unversioned copy of flash_attn/cute (flash-attn 2.8.3 does).
        return (
            f"flash_attn.cute imports, but the {_FA4_DIST} distribution is not installed: that flash_attn.cute is "
            "another copy (flash-attn 2's wheels bundle an early one), not a FlashAttention-4 release."
        )
    return None


# torch 2.11 to 2.13's FA4 route (torch/nn/attention/_fa4.py, _fa4_run_forward) unpacks exactly
# ``out, lse = _flash_attn_fwd(...)``. From flash-attn-4 4.0.0b19 on that function returns four values (4.0.0b36:
# five), so the route fails with "too many values to unpack"; torch 2.14 unpacks ``out, lse, *_``.
_FA4_LAST_TWO_VALUE_FWD = "4.0.0b18"
_TORCH_FA4_UNPACKS_ANY = "2.14"


def _sdpa_fa4_version_problem(torch_version: str, fa4_version: str) -> str | None:
    """Why torch `torch_version`'s FA4 route cannot call flash-attn-4 `fa4_version`, or None."""
    if TorchVersion(torch_version) < _TORCH_FA4_UNPACKS_ANY and TorchVersion(fa4_version) > _FA4_LAST_TWO_VALUE_FWD:
        return (
            f"torch {torch_version}'s FA4 route unpacks two values from flash-attn-4's _flash_attn_fwd, which returns "
            f"more from 4.0.0b19 on: it needs {_FA4_DIST} {_FA4_LAST_TWO_VALUE_FWD} or older (or torch "
            f"{_TORCH_FA4_UNPACKS_ANY} or newer), and {fa4_version} is installed."
        )
    return None


def _sdpa_fa4_problem(capability: tuple[int, int] | None = None) -> str | None:
    """Why SDPA's FA4 route cannot run here, or None."""
    from torch.nn import attention as nn_attention

    list_impls = getattr(nn_attention, "list_flash_attention_impls", None)
    if list_impls is None or "FA4" not in list_impls():
        return (
            f"torch {torch.__version__} has no FA4 flash attention implementation to activate "
            "(torch.nn.attention.activate_flash_attention_impl, torch 2.11 and newer)."
        )
    problem = _fa4_install_problem()
    if problem is not None:
        return problem
    # The route checks the major version itself and raises for others (_fa4_common_support_error).
    if capability is not None and capability[0] not in (9, 10):
        return "PyTorch's FA4 route runs on compute capability 9.x and 10.x only; this GPU is sm%d%d." % capability
    return _sdpa_fa4_version_problem(str(torch.__version__), _dist_version(_FA4_DIST))


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
    # With one kv head the reshape is a view whose head stride is 0; contiguous() copies it as it copies any other
    # count. Besides the cost the docstring promises, a kernel may need it: PyTorch's FA4 route returns gradients laid
    # out unlike the compiled graph's fake kernel predicts for a zero-stride input, and Inductor's check fails.
    B, T, Hkv, D = x.shape
    return x[:, :, :, None, :].expand(B, T, Hkv, n_rep, D).reshape(B, T, Hkv * n_rep, D).contiguous()


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

_FA4 = AttentionImpl(
    name="fa4",
    description="FlashAttention-4 from the flash-attn-4 package (CuTe DSL kernels), its forward and backward "
    "called through torch custom ops: no graph break",
    factory=_FlashAttn4,
    devices=_CUDA,
    dtypes=_HALF,
    head_dims=_FA4_HEAD_DIMS,
    native_gqa=True,
    requires=("flash_attn.cute",),
    # Its forward runs on sm80 too, but its backward on sm90 and newer only; the sweep trains.
    min_capability=(9, 0),
    check=_fa4_install_problem,
)


def _graph_breaking(entry: AttentionImpl, module: type[nn.Module], description: str) -> AttentionImpl:
    """`entry`'s kernel with a graph break at every attention layer: `module(graph_break=True)`, named
    ``<entry>_graphbreak``."""
    return replace(entry, name=f"{entry.name}_graphbreak", description=description, fullgraph=False,
                   factory=lambda **kw: module(graph_break=True, **kw))


# SDPA's grouped-query attention (enable_gqa, torch >= 2.5) is native for the default dispatch, the flash and the
# math backends, which take it in every torch the sweep supports. The memory-efficient and cuDNN backends gained it
# later than the flash backend; whether the torch at hand has it is not known without a GPU, so the registry repeats
# their k/v heads, which every version runs (tests/test_attention.py probes them on a GPU).
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
        native_gqa=True,
    ),
    _sdpa_entry(
        "sdpa_flash",
        "SDPA restricted to its FlashAttention(-2) backend",
        SDPBackend.FLASH_ATTENTION,
        devices=_CUDA,
        dtypes=_HALF,
        head_dims=_FA2_HEAD_DIMS,
        min_capability=(8, 0),
        native_gqa=True,
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
        native_gqa=True,
    ),
    _FA2,
    # The 2023 condition: the same kernel, but Dynamo must leave the graph at every attention layer.
    _graph_breaking(
        _FA2, _FlashAttn2,
        "FlashAttention-2 wrapped in torch.compiler.disable: a graph break at every attention layer, as flash-attn "
        "forced in 2023",
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
    _FA4,
    _graph_breaking(
        _FA4, _FlashAttn4,
        "FlashAttention-4's own flash_attn.cute.flash_attn_func under torch.compiler.disable: a graph break at every "
        "attention layer",
    ),
    _sdpa_entry(
        "sdpa_fa4",
        "SDPA restricted to its flash backend, with PyTorch's FlashAttention-4 implementation activated "
        "(torch.nn.attention.activate_flash_attention_impl('FA4'), which calls flash-attn-4's kernels)",
        SDPBackend.FLASH_ATTENTION,
        flash_impl="FA4",
        devices=_CUDA,
        dtypes=_HALF,
        head_dims=_FA4_HEAD_DIMS,
        requires=("flash_attn.cute",),
        min_capability=(9, 0),
        check=_sdpa_fa4_problem,
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

    Checked in this order: device, dtype, head dim, required modules (with the import error), compute capability,
    then the entry's own installation check (package versions).
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
    if device_type == "cuda" and capability is None and torch.cuda.is_available():
        capability = torch.cuda.get_device_capability()
    if device_type != "cuda":
        capability = None
    if capability is not None and impl.min_capability is not None and tuple(capability) < impl.min_capability:
        need = "sm%d%d" % impl.min_capability
        have = "sm%d%d" % tuple(capability)
        return f"{name} needs a GPU of compute capability {need} or newer; this one is {have}."
    if impl.check is not None:
        problem = impl.check(None if capability is None else tuple(capability))
        if problem is not None:
            return f"{name}: {problem}"
    return None
