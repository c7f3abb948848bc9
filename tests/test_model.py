"""GPT model: configs, parameter counts against the closed form, structure, forward/loss, compile on CPU."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attnsweep.model import GPT, MODEL_CONFIGS, GPTConfig, closed_form_params, model_config

CPU_ATTN = ["naive", "sdpa", "sdpa_math"]


def _meta_gpt(cfg: GPTConfig, attn: str = "sdpa") -> GPT:
    # Meta tensors have shapes but no storage: counting medium/large parameters costs no memory.
    with torch.device("meta"):
        return GPT(cfg, attn=attn)


def _kv_options(name: str) -> list[int | None]:
    h = MODEL_CONFIGS[name].n_head
    return [None, *[kv for kv in (h // 2, 2, 1) if h % kv == 0]]


@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
def test_param_count_matches_closed_form(name):
    for kv in _kv_options(name):
        cfg = model_config(name, block_size=1024, kv_heads=kv)
        assert _meta_gpt(cfg).num_params() == closed_form_params(cfg), (name, kv)


def test_small_param_count_value():
    # GPT-2 small is 124,439,808 parameters with its vocabulary (50,257) and biases; here V = 16,384 and no Linear
    # biases (12 layers x 6,912): 124,439,808 - 33,873 * 768 - 82,944.
    assert closed_form_params(model_config("small", block_size=1024)) == 98_342_400


def test_tiny_real_model_count():
    cfg = model_config("tiny", block_size=64)
    assert GPT(cfg).num_params() == closed_form_params(cfg)


@pytest.mark.parametrize("name", ["tiny", "small"])
@pytest.mark.parametrize("kv", [2, 1])
def test_gqa_changes_count_by_formula(name, kv):
    full = model_config(name, block_size=256)
    gqa = model_config(name, block_size=256, kv_heads=kv)
    # k and v projections shrink from H to Hkv heads: 2 * C * (H - Hkv) * D fewer weights per layer.
    saved = full.n_layer * 2 * full.n_embd * (full.n_head - kv) * full.head_dim
    assert closed_form_params(gqa) == closed_form_params(full) - saved
    assert _meta_gpt(gqa).num_params() == closed_form_params(full) - saved


def test_non_embedding_subtracts_positions():
    cfg = model_config("tiny", block_size=128)
    m = _meta_gpt(cfg)
    assert m.num_params() - m.num_params(non_embedding=True) == 128 * cfg.n_embd


def test_configs_and_properties():
    expected = {
        "tiny": (2, 64, 4, 16),
        "small": (12, 768, 12, 64),
        "medium": (24, 1024, 16, 64),
        "large": (36, 1280, 20, 64),
    }
    for name, (L, C, H, D) in expected.items():
        cfg = model_config(name, block_size=512)
        assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_dim) == (L, C, H, D)
        assert cfg.block_size == 512 and cfg.vocab_size == 16384 and cfg.kv_heads == H
    assert model_config("small", block_size=512, kv_heads=4).kv_heads == 4


def test_unknown_model_lists_allowed():
    with pytest.raises(ValueError) as exc:
        model_config("xl", block_size=1024)
    for name in ("xl", "tiny", "small", "medium", "large"):
        assert name in str(exc.value)


@pytest.mark.parametrize("kv", [0, -1, 3, 5])
def test_bad_kv_heads(kv):
    with pytest.raises(ValueError, match="kv_heads"):
        model_config("tiny", block_size=64, kv_heads=kv)


def test_structure_no_bias_no_dropout_tied():
    m = GPT(model_config("tiny", block_size=32, kv_heads=2))
    linears = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    assert linears and all(lin.bias is None for lin in linears)
    norms = [mod for mod in m.modules() if isinstance(mod, nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1 and all(n.bias is not None for n in norms)
    assert not any(isinstance(mod, nn.Dropout) for mod in m.modules())
    assert m.lm_head.weight is m.transformer.wte.weight
    # Fused QKV to (H + 2 Hkv) * D = (4 + 4) * 16.
    assert m.transformer.h[0].attn.c_attn.weight.shape == (128, 64)


def test_init_scales():
    torch.manual_seed(0)
    m = GPT(model_config("small", block_size=64), attn="naive")
    blk = m.transformer.h[0]
    assert blk.mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert blk.mlp.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(24), rel=0.02)
    assert blk.attn.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(24), rel=0.03)
    assert m.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.02)


def test_forward_shapes_and_initial_loss():
    torch.manual_seed(0)
    cfg = model_config("tiny", block_size=32)
    m = GPT(cfg)
    idx, targets = torch.randint(0, cfg.vocab_size, (2, 3, 32))
    logits, loss = m(idx, targets)
    assert logits.shape == (3, 32, cfg.vocab_size)
    assert abs(loss.item() - math.log(cfg.vocab_size)) < 0.3  # near uniform at init
    logits2, loss2 = m(idx[:, :7])
    assert loss2 is None and logits2.shape == (3, 7, cfg.vocab_size)
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("kv", [None, 2, 1])
def test_attention_implementations_agree_in_model(kv):
    cfg = model_config("tiny", block_size=24, kv_heads=kv)
    idx = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    results = {}
    for attn in CPU_ATTN:
        torch.manual_seed(0)  # same weights for every implementation
        m = GPT(cfg, attn=attn).double()
        logits, loss = m(idx, idx)
        loss.backward()
        results[attn] = (logits.detach(), m.transformer.h[0].attn.c_attn.weight.grad)
    ref_logits, ref_grad = results["naive"]
    for attn in CPU_ATTN[1:]:
        torch.testing.assert_close(results[attn][0], ref_logits, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(results[attn][1], ref_grad, rtol=1e-9, atol=1e-10)


def test_causal():
    torch.manual_seed(0)
    cfg = model_config("tiny", block_size=16, kv_heads=1)
    m = GPT(cfg, attn="naive")
    idx = torch.randint(0, cfg.vocab_size, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (idx[0, 10] + 1) % cfg.vocab_size
    a, _ = m(idx)
    b, _ = m(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_compiled_tiny_gpt_sdpa_fullgraph_cpu(fresh_dynamo):
    torch.manual_seed(0)
    cfg = model_config("tiny", block_size=32)
    m = GPT(cfg, attn="sdpa")
    idx = torch.randint(0, cfg.vocab_size, (2, 32))
    _, loss_eager = m(idx, idx)
    compiled = torch.compile(m, fullgraph=True)
    _, loss = compiled(idx, idx)
    loss.backward()
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(loss_eager.item(), rel=1e-4)
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
