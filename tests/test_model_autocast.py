"""bf16 autocast over float32 weights (``precision: bf16``, how CoreNet trained OpenELM) is CoreNet's
arithmetic.

The oracle, :func:`corenet_order_logits`, is a functional re-implementation of CoreNet's ``general_gpt.py``
forward over the model's parameters, written from its order of operations (not its code):

- RMSNorm: ``x.float()`` normalised by ``rsqrt(mean(x^2) + eps)``, cast back to x's dtype, then ``* weight``
with
  ordinary type promotion: a bf16 value times a float32 weight is float32 (under autocast elementwise ops are
  not cast), so the q/k norms hand float32 to RoPE;
- RoPE in float32 on the (float32) normalised q/k, cast back to their dtype; keys/values repeated per query
group
  (``repeat_interleave``) and ``scaled_dot_product_attention(is_causal=True)`` (autocast casts it to bf16);
- residual adds ``x + branch`` (float32 + bf16 promotes), SwiGLU ``silu(gate) * up``, tied head ``F.linear``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from elm_data.model import OpenELM, OpenELMConfig
from elm_data.model.layers import RMSNorm


def corenet_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def corenet_rope(x: torch.Tensor, head_dim: int, base: float) -> torch.Tensor:
    """Half-rotation RoPE in float32 at positions 0..T-1; the result in x's dtype."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    theta = torch.einsum("i,j->ij", torch.arange(x.shape[-2], dtype=torch.float32), inv_freq)
    cos, sin = torch.cat((theta, theta), -1).cos(), torch.cat((theta, theta), -1).sin()
    x32 = x.float()
    first, second = x32.chunk(2, dim=-1)
    return (x32 * cos + torch.cat((-second, first), dim=-1) * sin).type_as(x)


def corenet_attention(layer, x: torch.Tensor, cfg: OpenELMConfig) -> torch.Tensor:
    attn, (batch, length, _) = layer.attn, x.shape
    qkv = F.linear(x, attn.qkv_proj.weight).reshape(batch, length, -1, cfg.head_dim).transpose(1, 2)
    q, k, v = qkv.split([attn.num_query_heads, attn.num_kv_heads, attn.num_kv_heads], dim=1)
    if attn.q_norm is not None:
        q, k = (
            corenet_norm(q, attn.q_norm.weight, cfg.norm_eps),
            corenet_norm(k, attn.k_norm.weight, cfg.norm_eps),
        )
    q, k = (
        corenet_rope(q, cfg.head_dim, cfg.rope_freq_constant),
        corenet_rope(k, cfg.head_dim, cfg.rope_freq_constant),
    )
    groups = attn.num_query_heads // attn.num_kv_heads
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.linear(out.transpose(1, 2).reshape(batch, length, -1), attn.out_proj.weight)


def corenet_order_logits(model: OpenELM, ids: torch.Tensor) -> torch.Tensor:
    """Logits of ``model``'s parameters computed in CoreNet's order of operations (see the module
    docstring)."""
    cfg = model.config
    x = F.embedding(ids, model.token_embeddings.weight)
    for layer in model.layers:
        x = x + corenet_attention(layer, corenet_norm(x, layer.attn_norm.weight, cfg.norm_eps), cfg)
        gate, up = F.linear(
            corenet_norm(x, layer.ffn_norm.weight, cfg.norm_eps), layer.ffn.proj_1.weight
        ).chunk(2, -1)
        x = x + F.linear(F.silu(gate) * up, layer.ffn.proj_2.weight)
    head = model.token_embeddings.weight if model.lm_head is None else model.lm_head.weight
    return F.linear(corenet_norm(x, model.norm.weight, cfg.norm_eps), head)


def trained_like(name: str, **overrides) -> OpenELM:
    """A float32 model whose norm weights are far from one, as in any trained checkpoint (with unit weights
    the two orders agree: a bf16 value times 1.0 is exact in either dtype)."""
    torch.manual_seed(0)
    model = OpenELM(OpenELMConfig.named(name, **overrides))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, RMSNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 3 + 0.2)
    return model.eval()


def autocast_logits(forward, model: OpenELM, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        return forward(model, ids).float()


def check_autocast_matches_corenet(model: OpenELM, length: int) -> None:
    ids = torch.randint(0, model.config.vocab_size, (2, length), generator=torch.Generator().manual_seed(3))
    ours = autocast_logits(lambda m, i: m(i), model, ids)
    reference = autocast_logits(corenet_order_logits, model, ids)
    assert torch.equal(ours, reference), f"max |diff| {(ours - reference).abs().max():.4f}"
    with torch.no_grad():  # float32 and whole-model bf16: unchanged, and equal to the same reference
        assert torch.equal(model(ids), corenet_order_logits(model, ids))
        bf16 = OpenELM(model.config).to(torch.bfloat16).eval()
        bf16.load_state_dict(model.state_dict())
        assert torch.equal(bf16(ids), corenet_order_logits(bf16, ids))


def test_q_k_norms_promote_to_float32_under_autocast_as_corenet_does():
    model = trained_like("tiny")
    # a bf16 projection
    x = torch.randn(2, 4, 9, 32, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    norm = model.layers[0].attn.q_norm
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
    assert out.dtype == torch.float32  # bf16 (normalised) x float32 weight
    assert torch.equal(out, corenet_norm(x, norm.weight, norm.eps))


def test_tiny_logits_under_bf16_autocast_equal_corenet_order():
    check_autocast_matches_corenet(trained_like("tiny"), length=40)


@pytest.mark.slow  # a 270M model on the CPU (~1 GB of float32 weights)
def test_270m_logits_under_bf16_autocast_equal_corenet_order():
    check_autocast_matches_corenet(trained_like("270M"), length=24)


@pytest.mark.slow  # imports transformers (~5 s); the tiny test above is the quick sibling
def test_exported_hf_code_under_bf16_autocast_equals_corenet_order(tmp_path):
    """The remote code an export carries (``model/hf_modeling.py``) does the same arithmetic under
    autocast."""
    pytest.importorskip("transformers")
    from elm_data.model import export_hf
    from elm_data.model.hf_modeling import OpenELMForCausalLM

    model = trained_like("tiny", share_input_output_layers=False)
    hf = OpenELMForCausalLM.from_pretrained(export_hf(model, tmp_path / "hf")).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 33), generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ours = hf(ids).logits.float()
    assert torch.equal(ours, autocast_logits(corenet_order_logits, model, ids))
