"""The attention registry: every implementation against a float64 reference, support checks, compile behaviour.

CPU tests run in the normal suite. Tests marked `gpu` need CUDA (run them on the GPU host with `pytest -m gpu`).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend

from attnsweep import attention
from attnsweep.model import GPT, GPTConfig

EXPECTED_NAMES = [
    "naive",
    "sdpa",
    "sdpa_flash",
    "sdpa_efficient",
    "sdpa_cudnn",
    "sdpa_math",
    "fa2",
    "fa2_graphbreak",
    "flex",
    "fa4",
    "fa4_graphbreak",
    "sdpa_fa4",
]
FA4_NAMES = ["fa4", "fa4_graphbreak", "sdpa_fa4"]
GQA_SHAPES = [(4, 4), (4, 2), (4, 1)]  # (query heads, key/value heads): MHA, GQA, MQA


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention written out plainly, in float64. (B, T, H, D), (B, T, Hkv, D) x2 -> (B, T, H, D)."""
    q, k, v = q.double(), k.double(), v.double()
    n_rep = q.size(2) // k.size(2)
    k = k.repeat_interleave(n_rep, dim=2)  # query head h uses key/value head h // n_rep
    v = v.repeat_interleave(n_rep, dim=2)
    T = q.size(1)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.size(-1))
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(diagonal=1)
    probs = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v)


def _inputs(B: int, T: int, H: int, Hkv: int, D: int, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v, dy = (
        torch.randn(B, T, h, D, generator=g, dtype=torch.float64)
        for h in (H, Hkv, Hkv, H)
    )
    return [t.to(device=device, dtype=dtype) for t in (q, k, v)], dy.to(device)


def _outputs_and_grads(fn, q, k, v, dy):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    y = fn(q, k, v)
    (y.to(dy.dtype) * dy).sum().backward()
    return y.detach(), (q.grad, k.grad, v.grad)


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.double(), ref.double()
    return ((a - ref).norm() / ref.norm()).item()


def check_against_reference(fn, *, B, T, H, Hkv, D, dtype, device, tol: float | None = None) -> dict[str, float]:
    """Outputs and gradients wrt q, k, v of ``fn`` against the float64 reference on the same inputs.

    float64/float32: elementwise assert_close. fp16/bf16: relative Frobenius error <= tol (the kernels round
    inputs, scores and outputs to 8-11 bits of mantissa, so elementwise bounds would be either loose or flaky).
    """
    (q, k, v), dy = _inputs(B, T, H, Hkv, D, dtype, device)
    y, grads = _outputs_and_grads(fn, q, k, v, dy)
    y_ref, grads_ref = _outputs_and_grads(reference_attention, q.double(), k.double(), v.double(), dy)
    assert y.shape == (B, T, H, D) and y.dtype == dtype
    errs = {"out": _rel_err(y, y_ref)}
    errs.update({f"d{n}": _rel_err(g, gr) for n, g, gr in zip("qkv", grads, grads_ref)})
    if dtype in (torch.float64, torch.float32):
        tols = {torch.float64: dict(rtol=1e-7, atol=1e-9), torch.float32: dict(rtol=1e-4, atol=1e-5)}[dtype]
        torch.testing.assert_close(y.double(), y_ref, **tols)
        for n, g, gr in zip("qkv", grads, grads_ref):
            torch.testing.assert_close(g.double(), gr, **tols, msg=lambda m, n=n: f"grad wrt {n}: {m}")
    else:
        assert tol is not None
        bad = {n: e for n, e in errs.items() if not e <= tol}
        assert not bad, f"relative errors above {tol}: {bad} (all: {errs})"
    return errs


def _cpu_reason(name: str, dtype: torch.dtype = torch.float32, head_dim: int = 16, H: int = 4, Hkv: int = 4):
    return attention.unsupported_reason(
        name, device_type="cpu", dtype=dtype, head_dim=head_dim, n_head=H, n_kv_head=Hkv
    )


CPU_NAMES = [n for n in EXPECTED_NAMES if _cpu_reason(n) is None]


# ---------------------------------------------------------------------------------------------------------------
# Registry shape


def test_registry_names_match_design():
    assert attention.names() == EXPECTED_NAMES
    for n in EXPECTED_NAMES:
        impl = attention.get(n)
        assert impl.name == n and impl.description
        assert impl.devices <= {"cpu", "cuda"}


def test_cpu_capable_set():
    # flex is cuda-only: PyTorch's FlexAttention has no backward pass on CPU (see the flex entry).
    assert set(CPU_NAMES) == {"naive", "sdpa", "sdpa_math"}


def test_fullgraph_flags():
    for n in EXPECTED_NAMES:
        assert attention.get(n).fullgraph is (not n.endswith("_graphbreak")), n


@pytest.mark.parametrize("call", ["get", "build", "unsupported_reason", "GPT"])
def test_unknown_attention_name_lists_allowed(call):
    calls = {
        "get": lambda: attention.get("flash3"),
        "build": lambda: attention.build("flash3", n_head=4, n_kv_head=4, head_dim=16, block_size=8),
        "unsupported_reason": lambda: attention.unsupported_reason(
            "flash3", device_type="cpu", dtype=torch.float32, head_dim=16, n_head=4, n_kv_head=4
        ),
        "GPT": lambda: GPT(GPTConfig(n_layer=1, n_embd=16, n_head=1, block_size=4, vocab_size=8), attn="flash3"),
    }
    with pytest.raises(ValueError) as exc:
        calls[call]()
    msg = str(exc.value)
    assert "flash3" in msg
    for n in EXPECTED_NAMES:
        assert n in msg


@pytest.mark.parametrize("n_kv_head", [0, 3])
def test_bad_kv_heads_raise(n_kv_head):
    with pytest.raises(ValueError, match="n_kv_head"):
        attention.build("sdpa", n_head=4, n_kv_head=n_kv_head, head_dim=16, block_size=8)


@pytest.mark.parametrize("Hkv", [1, 2])
def test_repeated_keys_and_values_are_copies_at_every_kv_head_count(Hkv):
    """One kv head's expand + reshape is a zero-stride view; it is copied like any other count (PyTorch's FA4 route
    under torch.compile fails on the view: its gradients' layout is not the one the fake kernel predicts)."""
    x = torch.randn(2, 5, Hkv, 4)
    y = attention._repeat_kv(x, 4)
    assert y.is_contiguous() and 0 not in y.stride()
    assert torch.equal(y, x.repeat_interleave(4, dim=2))


def test_import_does_not_import_flash_attn():
    code = "import sys, attnsweep.attention; assert 'flash_attn' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------------------------
# unsupported_reason


def test_unsupported_fa2_on_cpu_is_a_sentence():
    reason = attention.unsupported_reason(
        "fa2", device_type="cpu", dtype=torch.float16, head_dim=64, n_head=12, n_kv_head=12
    )
    assert reason and "cpu" in reason and "cuda" in reason and reason.endswith(".")


def test_unsupported_unknown_device():
    for n in EXPECTED_NAMES:
        reason = attention.unsupported_reason(
            n, device_type="xpu", dtype=torch.float16, head_dim=64, n_head=12, n_kv_head=12
        )
        assert reason and "'xpu'" in reason, n


def test_unsupported_flex_on_cpu_says_why():
    reason = _cpu_reason("flex")
    assert reason and "backward" in reason


def test_unsupported_dtype_head_dim_capability():
    kw = dict(device_type="cuda", n_head=12, n_kv_head=12)
    r = attention.unsupported_reason("sdpa_flash", dtype=torch.float32, head_dim=64, capability=(9, 0), **kw)
    assert r and "float32" in r
    r = attention.unsupported_reason("sdpa_flash", dtype=torch.float16, head_dim=12, capability=(9, 0), **kw)
    assert r and "head dim 12" in r
    r = attention.unsupported_reason("sdpa_flash", dtype=torch.float16, head_dim=64, capability=(7, 5), **kw)
    assert r and "sm80" in r and "sm75" in r
    assert attention.unsupported_reason("sdpa_flash", dtype=torch.float16, head_dim=64, capability=(9, 0), **kw) is None
    assert attention.unsupported_reason("naive", dtype=torch.float32, head_dim=64, capability=(7, 5), **kw) is None


@pytest.mark.parametrize(
    "name,module",
    [("fa2", "flash_attn"), ("fa2_graphbreak", "flash_attn")] + [(n, "flash_attn.cute") for n in FA4_NAMES],
)
def test_unsupported_missing_package_names_import_error(name, module):
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 -- whatever unsupported_reason must then report
        pass
    else:
        pytest.skip(f"{module} imports here")
    r = attention.unsupported_reason(
        name, device_type="cuda", dtype=torch.bfloat16, head_dim=64, n_head=12, n_kv_head=4, capability=(9, 0)
    )
    assert r and repr(module) in r and "Error" in r  # the import error's type and message are quoted


# ---------------------------------------------------------------------------------------------------------------
# Numerics on CPU


@pytest.mark.parametrize("H,Hkv", GQA_SHAPES)
@pytest.mark.parametrize("name", CPU_NAMES)
def test_cpu_matches_reference(name, H, Hkv):
    dtype = torch.float64 if _cpu_reason(name, torch.float64, H=H, Hkv=Hkv) is None else torch.float32
    assert _cpu_reason(name, dtype, H=H, Hkv=Hkv) is None
    mod = attention.build(name, n_head=H, n_kv_head=Hkv, head_dim=16, block_size=64)
    for T in (1, 37):
        check_against_reference(mod, B=2, T=T, H=H, Hkv=Hkv, D=16, dtype=dtype, device="cpu")


@pytest.mark.parametrize("H,Hkv", GQA_SHAPES)
def test_flex_cpu_forward_matches_reference(H, Hkv):
    # flex cannot train on CPU (no backward), but its forward path, mask and GQA mapping can be checked here.
    mod = attention.build("flex", n_head=H, n_kv_head=Hkv, head_dim=16, block_size=64)
    (q, k, v), _ = _inputs(2, 37, H, Hkv, 16, torch.float64, "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()": expected on CPU
        y = mod(q, k, v)
    torch.testing.assert_close(y, reference_attention(q, k, v), rtol=1e-7, atol=1e-9)


def test_flex_compiles_once_with_the_mask_built_with_the_module(fresh_dynamo):
    # Built for its context on the default device, the block mask is a graph input from the first call: one graph.
    # A mask built inside the first compiled call would make Dynamo compile a second graph on the next call.
    from attnsweep.training import graph_stats, reset_graph_counters

    reset_graph_counters()
    T = 128
    with torch.device("cpu"):
        mod = attention.build("flex", n_head=4, n_kv_head=4, head_dim=16, block_size=T)
    (q, k, v), _ = _inputs(1, T, 4, 4, 16, torch.float32, "cpu")
    compiled = torch.compile(mod, fullgraph=True)
    with torch.no_grad():
        for _ in range(3):
            y = compiled(q, k, v)
    assert graph_stats()[:2] == (1, 0)
    torch.testing.assert_close(y, reference_attention(q, k, v).to(y.dtype), rtol=2e-4, atol=2e-5)


def test_naive_mask_buffer_not_in_state_dict():
    mod = attention.build("naive", n_head=4, n_kv_head=2, head_dim=16, block_size=32)
    assert dict(mod.state_dict()) == {}
    assert any(b.shape == (32, 32) for b in mod.buffers())


@pytest.mark.parametrize("name", [n for n in CPU_NAMES if attention.get(n).fullgraph])
def test_cpu_fullgraph_entries_trace_without_breaks(name, fresh_dynamo):
    mod = attention.build(name, n_head=4, n_kv_head=2, head_dim=16, block_size=64)
    (q, k, v), _ = _inputs(2, 16, 4, 2, 16, torch.float32, "cpu")
    explanation = torch._dynamo.explain(mod)(q, k, v)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


# ---------------------------------------------------------------------------------------------------------------
# FlashAttention-4 on the CPU: flash-attn-4's forward and backward replaced by a plain PyTorch stand-in with the
# package's signatures, so the custom ops' registration, fake kernels and autograd are tested without a GPU.


class _FA4StandIn:
    """flash_attn.cute.interface's _flash_attn_fwd/_flash_attn_bwd for (B, T, H, D) inputs, causal, in PyTorch.

    The backward uses the forward's lse (as the real one does), so a wrong lse reaching it gives wrong gradients.
    `extra` values are appended to the forward's result, as flash-attn-4 4.0.0b19 and newer do.
    """

    def __init__(self, extra: int) -> None:
        self.extra = extra
        self.calls = {"fwd": 0, "bwd": 0}

    @staticmethod
    def _heads(q, k, v):
        n_rep = q.size(2) // k.size(2)
        q, k, v = (t.transpose(1, 2).double() for t in (q, k, v))
        return q, k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1), n_rep

    @staticmethod
    def _scores(q, k):
        T = q.size(2)
        future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(diagonal=1)
        return (q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))).masked_fill(future, float("-inf"))

    def _flash_attn_fwd(self, q, k, v, *, causal, return_lse, **_):
        assert causal and return_lse
        self.calls["fwd"] += 1
        qh, kh, vh, _ = self._heads(q, k, v)
        s = self._scores(qh, kh)
        lse = s.logsumexp(-1)
        out = ((s - lse[..., None]).exp() @ vh).transpose(1, 2).to(q.dtype).contiguous()
        return (out, lse.float()) + (None,) * self.extra

    def _flash_attn_bwd(self, q, k, v, out, dout, lse, *, causal, **_):
        assert causal
        self.calls["bwd"] += 1
        B, T, H, D = q.shape
        qh, kh, vh, n_rep = self._heads(q, k, v)
        oh, doh = (t.transpose(1, 2).double() for t in (out, dout))
        p = (self._scores(qh, kh) - lse.double()[..., None]).exp()
        dp = doh @ vh.transpose(-1, -2)
        ds = p * (dp - (doh * oh).sum(-1, keepdim=True)) / math.sqrt(D)
        dq = ds @ kh
        dk = (ds.transpose(-1, -2) @ qh).view(B, -1, n_rep, T, D).sum(2)
        dv = (p.transpose(-1, -2) @ doh).view(B, -1, n_rep, T, D).sum(2)
        return tuple(g.transpose(1, 2).to(q.dtype) for g in (dq, dk, dv))


@pytest.fixture(params=[0, 3], ids=["returns-2", "returns-5"])
def fa4_stand_in(request, monkeypatch):
    stand_in = _FA4StandIn(extra=request.param)
    monkeypatch.setattr(attention, "_fa4_interface", lambda: stand_in)
    return stand_in


def test_fa4_custom_ops_pass_opcheck(fa4_stand_in):
    # Fake kernels against the real ones (shapes, dtypes, strides), the autograd registration, AOT dispatch.
    (q, k, v), _ = _inputs(2, 9, 4, 2, 16, torch.float32, "cpu")
    torch.library.opcheck(attention._fa4_fwd, tuple(t.requires_grad_(True) for t in (q, k, v)))


@pytest.mark.parametrize("H,Hkv", GQA_SHAPES)
def test_fa4_cpu_stand_in_matches_reference(fa4_stand_in, H, Hkv):
    mod = attention.build("fa4", n_head=H, n_kv_head=Hkv, head_dim=16, block_size=64)
    for T in (1, 37):  # float32: the lse is float32, as the package's
        check_against_reference(mod, B=2, T=T, H=H, Hkv=Hkv, D=16, dtype=torch.float32, device="cpu")
    assert fa4_stand_in.calls["fwd"] == fa4_stand_in.calls["bwd"] == 2


def test_fa4_compiles_as_one_graph_and_trains_like_sdpa(fa4_stand_in, fresh_dynamo):
    """torch.compile(fullgraph=True) keeps fa4 in one graph, and forward and gradients equal SDPA's."""
    torch.manual_seed(0)
    fa4 = nn.Sequential(_AttnBlock("fa4", D=16), _AttnBlock("fa4", D=16))
    sdpa = nn.Sequential(_AttnBlock("sdpa", D=16), _AttnBlock("sdpa", D=16))
    sdpa.load_state_dict(fa4.state_dict())
    x = torch.randn(2, 24, 4 * 16, requires_grad=True)
    explanation = torch._dynamo.explain(fa4)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()
    y_ref = sdpa(x)
    grads_ref = torch.autograd.grad(y_ref.square().mean(), [x, *sdpa.parameters()])
    fa4_stand_in.calls.update(fwd=0, bwd=0)
    compiled = torch.compile(fa4, fullgraph=True)
    y = compiled(x)
    grads = torch.autograd.grad(y.square().mean(), [x, *fa4.parameters()])
    # The compiled graphs call the package's kernels (here the stand-in) once per layer, forward and backward.
    assert fa4_stand_in.calls == {"fwd": 2, "bwd": 2}
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# FlashAttention-4: what can run with which packages and GPU


def _fa4_reason(name: str, *, capability=(9, 0), head_dim: int = 64, dtype=torch.bfloat16) -> str | None:
    return attention.unsupported_reason(
        name, device_type="cuda", dtype=dtype, head_dim=head_dim, n_head=12, n_kv_head=4, capability=capability
    )


@pytest.fixture
def fa4_installed(monkeypatch):
    """As if flash-attn-4 (of the version set on the returned dict) imported: sets which distributions exist."""
    dists = {"flash-attn-4": "4.0.0b18"}
    monkeypatch.setattr(attention, "_import_error", lambda module: None)
    monkeypatch.setattr(attention, "_dist_version", dists.get)
    return dists


def test_fa4_entries_run_where_flash_attn_4_serves_them(fa4_installed, monkeypatch):
    from torch.torch_version import TorchVersion

    monkeypatch.setattr(torch, "__version__", TorchVersion("2.11.0+cu130"))
    for name in FA4_NAMES:
        assert _fa4_reason(name) is None, name
    assert _fa4_reason("fa4", capability=(10, 0)) is None


def test_sdpa_fa4_on_torch_2_11_needs_flash_attn_4_b18_or_older(fa4_installed, monkeypatch):
    from torch.torch_version import TorchVersion

    monkeypatch.setattr(torch, "__version__", TorchVersion("2.11.0+cu130"))
    fa4_installed["flash-attn-4"] = "4.0.0b36"
    r = _fa4_reason("sdpa_fa4")
    assert r and r.startswith("sdpa_fa4: ") and "4.0.0b18 or older" in r and "4.0.0b36 is installed" in r
    # Called directly it takes any of the versions' return values.
    assert _fa4_reason("fa4") is None and _fa4_reason("fa4_graphbreak") is None
    # torch 2.14 takes the first two of however many values.
    monkeypatch.setattr(torch, "__version__", TorchVersion("2.14.1"))
    assert _fa4_reason("sdpa_fa4") is None


@pytest.mark.parametrize("torch_version,fa4_version,runs", [
    ("2.11.0", "4.0.0b18", True), ("2.11.0+cu130", "4.0.0b19", False), ("2.13.0", "4.0.0b36", False),
    ("2.13.0", "4.0.0b3", True), ("2.14.0", "4.0.0b36", True),
])
def test_sdpa_fa4_version_rule(torch_version, fa4_version, runs):
    assert (attention._sdpa_fa4_version_problem(torch_version, fa4_version) is None) is runs


def test_fa4_needs_the_flash_attn_4_distribution(fa4_installed):
    # flash-attn 2's wheels bundle an unversioned flash_attn/cute that imports where its dependencies are present.
    del fa4_installed["flash-attn-4"]
    for name in FA4_NAMES:
        r = _fa4_reason(name)
        assert r and "flash-attn-4 distribution is not installed" in r, name


def test_fa4_needs_hopper_or_newer_and_its_head_dims(fa4_installed):
    for name in FA4_NAMES:
        r = _fa4_reason(name, capability=(8, 0))
        assert r and "sm90" in r and "sm80" in r, name
        r = _fa4_reason(name, head_dim=256)
        assert r and "head dim 256" in r, name
        r = _fa4_reason(name, dtype=torch.float32)
        assert r and "float32" in r, name
    r = _fa4_reason("sdpa_fa4", capability=(12, 0))
    assert r and "9.x and 10.x" in r
    assert _fa4_reason("fa4", capability=(12, 0)) is None


def test_sdpa_fa4_needs_torch_with_an_fa4_route(fa4_installed, monkeypatch):
    monkeypatch.setattr(torch.nn.attention, "list_flash_attention_impls", lambda: ["FA3"])
    r = _fa4_reason("sdpa_fa4")
    assert r and "no FA4 flash attention implementation" in r


@pytest.fixture
def test_flash_impls(monkeypatch):
    """Two stand-in flash attention implementations in torch's registry; records what activation did."""
    from torch.nn.attention import _registry

    events = []

    def register(name):
        def register_fn():
            events.append(("activate", name))
            return types.SimpleNamespace(remove=lambda: events.append(("remove", name)))
        return register_fn

    for name in ("TEST_A", "TEST_B"):
        monkeypatch.setitem(_registry._FLASH_ATTENTION_IMPLS, name, register(name))
    monkeypatch.setattr(_registry, "_FLASH_ATTENTION_ACTIVE", None)
    return events


def test_backend_scope_activates_and_restores_the_flash_impl(test_flash_impls, monkeypatch):
    from torch.nn.attention import _cur_sdpa_kernel_backends, current_flash_attention_impl

    entry = dataclasses.replace(attention.get("sdpa_fa4"), flash_impl="TEST_A")
    monkeypatch.setitem(attention.REGISTRY, "sdpa_fa4", entry)
    with attention.backend_scope("sdpa_fa4"):
        assert current_flash_attention_impl() == "TEST_A" and attention._scoped_flash_impl == "TEST_A"
        assert _cur_sdpa_kernel_backends() == [SDPBackend.FLASH_ATTENTION]
    assert current_flash_attention_impl() is None and attention._scoped_flash_impl is None
    assert test_flash_impls == [("activate", "TEST_A"), ("remove", "TEST_A")]
    # One active before the run is active again after it.
    torch.nn.attention.activate_flash_attention_impl("TEST_B")
    with attention.backend_scope("sdpa_fa4"):
        assert current_flash_attention_impl() == "TEST_A"
    assert current_flash_attention_impl() == "TEST_B"
    torch.nn.attention.restore_flash_attention_impl()
    # Entries without a flash implementation leave it alone.
    with attention.backend_scope("sdpa_flash"):
        assert current_flash_attention_impl() is None


def test_sdpa_fa4_module_refuses_to_run_outside_its_scope():
    mod = attention.build("sdpa_fa4", n_head=4, n_kv_head=2, head_dim=16, block_size=64)
    (q, k, v), _ = _inputs(1, 8, 4, 2, 16, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="backend_scope"):
        mod(q, k, v)


# ---------------------------------------------------------------------------------------------------------------
# GPU (skipped without CUDA; run with `pytest -m gpu` on the GPU host)

# Relative Frobenius error vs float64, outputs and grads. Seen on an H100 (torch 2.11): at most 6e-4 (fp16) and
# 3.7e-3 (bf16) over every entry and shape; these bounds leave about 5x room.
GPU_TOL = {torch.float16: 3e-3, torch.bfloat16: 2e-2}
GPU_D = 64  # every GPT-2 size; also the only head dim of the offline flash-attn wheel


def _gpu_skip_reason(name: str, dtype: torch.dtype, H: int, Hkv: int) -> str | None:
    return attention.unsupported_reason(
        name, device_type="cuda", dtype=dtype, head_dim=GPU_D, n_head=H, n_kv_head=Hkv
    )


@pytest.mark.gpu
@pytest.mark.parametrize("H,Hkv", GQA_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_gpu_matches_reference(name, dtype, H, Hkv):
    reason = _gpu_skip_reason(name, dtype, H, Hkv)
    if reason:
        pytest.skip(reason)
    mod = attention.build(name, n_head=H, n_kv_head=Hkv, head_dim=GPU_D, block_size=512).to("cuda")
    with attention.backend_scope(name):  # as a cell runs it (sdpa_fa4 runs only inside its scope)
        for T in (200, 512):
            errs = check_against_reference(
                mod, B=2, T=T, H=H, Hkv=Hkv, D=GPU_D, dtype=dtype, device="cuda", tol=GPU_TOL[dtype]
            )
            print(f"{name} {dtype} H={H} Hkv={Hkv} T={T}: {errs}")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["sdpa_efficient", "sdpa_cudnn"])
def test_gpu_probe_sdpa_backends_without_native_gqa_in_the_registry(name):
    """The registry repeats k/v heads for these two backends, which took grouped heads (enable_gqa) later than the
    flash backend. On the torch at hand: if the backend takes them, its result must be right (and its entry could
    turn native); if not, it is skipped with the backend's refusal, which is why the registry repeats."""
    backend = attention.get(name).sdpa_backend
    (q, k, v), _ = _inputs(2, 256, 8, 2, GPU_D, torch.float16, "cuda")
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    try:
        with torch.nn.attention.sdpa_kernel(backend):
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    except RuntimeError as e:
        pytest.skip(f"{name} takes no grouped heads in torch {torch.__version__}: {str(e).splitlines()[0]}")
    ref = reference_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(y.double(), ref.double(), rtol=GPU_TOL[torch.float16], atol=GPU_TOL[torch.float16])
    print(f"{name}: grouped heads taken natively by torch {torch.__version__}")


def _sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA's default dispatch in float32 on (B, T, H, D) inputs, grouped heads repeated: the FA4 routes' yardstick."""
    n_rep = q.size(2) // k.size(2)
    q, k, v = q.float(), k.float().repeat_interleave(n_rep, 2), v.float().repeat_interleave(n_rep, 2)
    y = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
    )
    return y.transpose(1, 2)


@pytest.mark.gpu
@pytest.mark.parametrize("Hkv", [1, 4])  # of 8 query heads: fa4 and fa4_graphbreak group natively
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", FA4_NAMES)
def test_gpu_fa4_routes_match_sdpa(name, dtype, Hkv):
    """Forward and gradients of each FlashAttention-4 route against SDPA on the same inputs, eager and compiled."""
    H = 8
    reason = _gpu_skip_reason(name, dtype, H, Hkv)
    if reason:
        pytest.skip(reason)
    mod = attention.build(name, n_head=H, n_kv_head=Hkv, head_dim=GPU_D, block_size=512).to("cuda")
    (q, k, v), dy = _inputs(2, 384, H, Hkv, GPU_D, dtype, "cuda")
    y_ref, grads_ref = _outputs_and_grads(_sdpa_attention, q, k, v, dy.float())
    torch._dynamo.reset()
    with attention.backend_scope(name):
        for fn in (mod, torch.compile(mod, fullgraph=attention.get(name).fullgraph)):
            y, grads = _outputs_and_grads(fn, q, k, v, dy)
            assert y.dtype == dtype and y.shape == q.shape
            errs = {"out": _rel_err(y, y_ref), **{f"d{n}": _rel_err(g, r) for n, g, r in zip("qkv", grads, grads_ref)}}
            print(f"{name} {dtype} H={H} Hkv={Hkv} compiled={fn is not mod}: {errs}")
            assert all(e <= GPU_TOL[dtype] for e in errs.values()), errs
    torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["eager", "compiled"])
@pytest.mark.parametrize("name", FA4_NAMES)
def test_gpu_fa4_profile_names_the_route(name, mode, fresh_dynamo):
    """The profiled kernels say flash-attn-4, and which route launched them (kernels.classify)."""
    from attnsweep.kernels import FA4_VIA_SDPA, profile_step

    reason = _gpu_skip_reason(name, torch.bfloat16, 4, 2)
    if reason:
        pytest.skip(reason)
    mod, x = _block_and_input(name)
    fn = torch.compile(mod, fullgraph=attention.get(name).fullgraph) if mode == "compiled" else mod
    with attention.backend_scope(name):
        fn(x).float().sum().backward()  # compiles and JIT-compiles the kernels outside the profiled step

        def step() -> None:
            fn(x).float().sum().backward()

        kernels = profile_step(step, torch.device("cuda"))
    print(name, mode, kernels["backend"], [r["name"][:100] for r in kernels["attention"]])
    assert kernels["backend"] == (FA4_VIA_SDPA if name == "sdpa_fa4" else "flash-attn-4"), kernels["attention"]


class _AttnBlock(nn.Module):
    """A small module using one registry entry: fused QKV projection, attention, output projection."""

    def __init__(self, name: str, H: int = 4, Hkv: int = 2, D: int = GPU_D) -> None:
        super().__init__()
        self.H, self.Hkv, self.D = H, Hkv, D
        self.qkv = nn.Linear(H * D, (H + 2 * Hkv) * D, bias=False)
        self.attn = attention.build(name, n_head=H, n_kv_head=Hkv, head_dim=D, block_size=256)
        self.proj = nn.Linear(H * D, H * D, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.H * self.D, self.Hkv * self.D, self.Hkv * self.D], dim=-1)
        y = self.attn(q.view(B, T, self.H, self.D), k.view(B, T, self.Hkv, self.D), v.view(B, T, self.Hkv, self.D))
        return x + self.proj(y.reshape(B, T, -1))


def _block_and_input(name: str):
    torch.manual_seed(0)
    mod = nn.Sequential(_AttnBlock(name), _AttnBlock(name)).to(device="cuda", dtype=torch.bfloat16)
    x = torch.randn(2, 256, 4 * GPU_D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    return mod, x


@pytest.mark.gpu
@pytest.mark.parametrize("name", [n for n in EXPECTED_NAMES if attention.get(n).fullgraph])
def test_gpu_fullgraph_entries_compile_as_one_graph(name, fresh_dynamo):
    reason = _gpu_skip_reason(name, torch.bfloat16, 4, 2)
    if reason:
        pytest.skip(reason)
    mod, x = _block_and_input(name)
    with attention.backend_scope(name):
        explanation = torch._dynamo.explain(mod)(x)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        torch._dynamo.reset()
        # And it really compiles (inductor, fullgraph) and trains: forward + backward, matching eager.
        y_eager = mod(x)
        (gx_eager,) = torch.autograd.grad(y_eager.float().square().mean(), x)
        compiled = torch.compile(mod, fullgraph=True)
        for _ in range(2):  # a second call exercises cached state (flex's block mask)
            y = compiled(x)
            (gx,) = torch.autograd.grad(y.float().square().mean(), x)
    assert _rel_err(y, y_eager) < 2e-2 and _rel_err(gx, gx_eager) < 5e-2


@pytest.mark.gpu
@pytest.mark.parametrize("name", [n for n in EXPECTED_NAMES if n.endswith("_graphbreak")])
def test_gpu_graphbreak_entries_break_the_graph(name, fresh_dynamo):
    reason = _gpu_skip_reason(name, torch.bfloat16, 4, 2)
    if reason:
        pytest.skip(reason)
    mod, x = _block_and_input(name)
    explanation = torch._dynamo.explain(mod)(x)
    # Dynamo resumes after each break in a new frame, so explain's break count need not equal the layer count;
    # what matters is that the attention splits the model into several graphs.
    assert explanation.graph_break_count >= 1 and explanation.graph_count >= 2
    y = torch.compile(mod)(x)  # and it still runs compiled, just in pieces
    y.float().sum().backward()
    assert torch.isfinite(y).all()


@pytest.mark.gpu
def test_gpu_tiny_gpt_compiled_every_supported_entry(fresh_dynamo):
    """The real model, compiled with each entry's fullgraph flag, trains a step in bf16 autocast."""
    cfg = GPTConfig(n_layer=2, n_embd=256, n_head=4, n_kv_head=2, block_size=256, vocab_size=512)
    # Targets differ from the inputs: with tied embeddings, predicting the input token is easier than chance.
    idx, targets = torch.randint(0, cfg.vocab_size, (2, 2, 256), device="cuda")
    ran = []
    # The study's three plus the forced-break and FA4 routes (the other entries compile in the test above).
    for name in ("naive", "sdpa_flash", "fa2", "fa2_graphbreak", "flex", "fa4", "fa4_graphbreak", "sdpa_fa4"):
        if _gpu_skip_reason(name, torch.bfloat16, cfg.n_head, cfg.kv_heads):
            continue
        torch._dynamo.reset()
        model = torch.compile(GPT(cfg, attn=name).cuda(), fullgraph=attention.get(name).fullgraph)
        with attention.backend_scope(name):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                _, loss = model(idx, targets)
            loss.backward()
        assert torch.isfinite(loss) and abs(loss.item() - math.log(cfg.vocab_size)) < 0.5, (name, loss)
        ran.append(name)
    assert {"naive", "sdpa_flash"} <= set(ran)


def test_the_kernel_cache_environment_points_into_the_cells_cache(tmp_path):
    env = attention.kernel_cache_env(tmp_path / "cache")
    assert env["FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED"] == "1"
    assert env["FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"] == str(tmp_path / "cache" / "flash_attn_cute")


def test_a_cells_jobs_set_the_kernel_cache_before_anything_imports_a_kernel_package(tmp_path, monkeypatch):
    from attnsweep import cli

    monkeypatch.setattr(os, "environ", dict(os.environ))
    cli._use_kernel_cache(str(tmp_path))
    assert os.environ["FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"] == str(tmp_path / "flash_attn_cute")


FA4_ONE_CALL = r"""
import torch
from attnsweep import attention
mod = attention.build("fa4", n_head=8, n_kv_head=8, head_dim=64, block_size=256).cuda()
q, k, v = (torch.randn(2, 256, 8, 64, device="cuda", dtype=torch.float16, requires_grad=True) for _ in range(3))
mod(q, k, v).float().sum().backward()
torch.cuda.synchronize()
"""


@pytest.mark.gpu
def test_gpu_fa4_kernels_compiled_by_a_warm_up_are_loaded_by_the_timed_job(tmp_path):
    """Two processes with one cell's cache, as its warm-up and timed job: the second loads the CuTe DSL kernels the
    first compiled and exported, instead of compiling them again."""
    reason = _gpu_skip_reason("fa4", torch.float16, 8, 8)
    if reason:
        pytest.skip(reason)
    src = str(Path(attention.__file__).resolve().parents[1])
    env = {**os.environ, **attention.kernel_cache_env(tmp_path), "FA_LOG_LEVEL": "1",
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    runs = [subprocess.run([sys.executable, "-c", FA4_ONE_CALL], env=env, capture_output=True, text=True,
                           timeout=900) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    # FA_LOG_LEVEL's handler writes to stdout (flash_attn/cute/fa_logging.py); errors go to stderr.
    first, second = (run.stdout + run.stderr for run in runs)
    assert "Exporting compiled function to disk" in first, first[-3000:]
    assert list((tmp_path / "flash_attn_cute").rglob("*.o"))
    assert "Loading compiled function from disk" in second, second[-3000:]
    assert "Exporting compiled function to disk" not in second
