"""OpenELM forward pass against a straightforward reference, causality, packing masks, tying and init."""

from __future__ import annotations

import math

import pytest
import torch

from elm_data.model import OpenELM, OpenELMConfig


@pytest.fixture(scope="module")
def small_vocab_model() -> OpenELM:
    torch.manual_seed(0)
    config = OpenELMConfig.named("tiny", vocab_size=512, max_context_length=256)
    model = OpenELM(config).eval()
    with torch.no_grad():  # non-trivial norm weights so the reference must apply them
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    return model


def reference_rms_norm(x, weight, eps=1e-6):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def reference_rope(x, base=10000.0):
    """Rotate pairs (j, j + d/2) as complex numbers by position * base^(-2j/d)."""
    length, dim = x.shape[-2], x.shape[-1]
    half = dim // 2
    theta = base ** (-torch.arange(half, dtype=torch.float64) * 2 / dim)
    angle = torch.arange(length, dtype=torch.float64)[:, None] * theta[None, :]
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * torch.polar(
        torch.ones_like(angle), angle
    )
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def reference_forward(model: OpenELM, ids: torch.Tensor) -> torch.Tensor:
    """Explicit-softmax OpenELM: weight rows sliced by hand, kv heads repeated, additive causal mask."""
    cfg = model.config
    hd = cfg.head_dim
    batch, length = ids.shape
    x = model.token_embeddings.weight[ids]
    causal = torch.full((length, length), float("-inf")).triu(1)
    for layer in model.layers:
        q_heads, kv_heads = layer.attn.num_query_heads, layer.attn.num_kv_heads
        w = layer.attn.qkv_proj.weight
        h = reference_rms_norm(x, layer.attn_norm.weight)
        q = (h @ w[: q_heads * hd].T).view(batch, length, q_heads, hd).transpose(1, 2)
        k = (
            (h @ w[q_heads * hd : (q_heads + kv_heads) * hd].T)
            .view(batch, length, kv_heads, hd)
            .transpose(1, 2)
        )
        v = (h @ w[(q_heads + kv_heads) * hd :].T).view(batch, length, kv_heads, hd).transpose(1, 2)
        q = reference_rope(reference_rms_norm(q, layer.attn.q_norm.weight))
        k = reference_rope(reference_rms_norm(k, layer.attn.k_norm.weight))
        k = k.repeat_interleave(q_heads // kv_heads, dim=1)
        v = v.repeat_interleave(q_heads // kv_heads, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd) + causal
        attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, q_heads * hd)
        x = x + attn @ layer.attn.out_proj.weight.T
        h = reference_rms_norm(x, layer.ffn_norm.weight)
        w1 = layer.ffn.proj_1.weight
        hidden = w1.shape[0] // 2
        gate, up = h @ w1[:hidden].T, h @ w1[hidden:].T
        x = x + (gate * torch.sigmoid(gate) * up) @ layer.ffn.proj_2.weight.T
    return reference_rms_norm(x, model.norm.weight) @ model.token_embeddings.weight.T


def test_forward_matches_reference_computation(small_vocab_model):
    ids = torch.randint(0, 512, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = small_vocab_model(ids)
        reference = reference_forward(small_vocab_model, ids)
    assert ours.shape == (2, 37, 512)
    torch.testing.assert_close(ours, reference, atol=2e-4, rtol=2e-4)


def test_changing_a_future_token_leaves_past_logits_unchanged(small_vocab_model):
    ids = torch.randint(0, 512, (1, 24), generator=torch.Generator().manual_seed(2))
    changed = ids.clone()
    changed[0, 15] = (changed[0, 15] + 7) % 512
    with torch.no_grad():
        before, after = small_vocab_model(ids), small_vocab_model(changed)
    torch.testing.assert_close(before[:, :15], after[:, :15], atol=0, rtol=0)
    assert (before[:, 15:] - after[:, 15:]).abs().amax() > 1e-3


def test_packed_documents_with_segment_ids_equal_separate_runs(small_vocab_model):
    gen = torch.Generator().manual_seed(3)
    doc_a, doc_b = (
        torch.randint(0, 512, (1, 11), generator=gen),
        torch.randint(0, 512, (1, 20), generator=gen),
    )
    packed = torch.cat([doc_a, doc_b], dim=1)
    segments = torch.tensor([[0] * 11 + [1] * 20])
    with torch.no_grad():
        logits = small_vocab_model(packed, segment_ids=segments)
        alone_a, alone_b = small_vocab_model(doc_a), small_vocab_model(doc_b)
        unmasked = small_vocab_model(packed)
    torch.testing.assert_close(logits[:, :11], alone_a, atol=1e-4, rtol=1e-4)
    # RoPE is relative: document B at positions 11.. behaves as if it started at 0.
    torch.testing.assert_close(logits[:, 11:], alone_b, atol=1e-4, rtol=1e-4)
    assert (unmasked[:, 11:] - alone_b).abs().amax() > 1e-3  # without the mask B sees A


def test_padding_mask_keeps_real_tokens_exact_and_padding_finite(small_vocab_model):
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(4))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 12 + [0] * 4])
    with torch.no_grad():
        logits = small_vocab_model(padded, attention_mask=mask)
        alone = small_vocab_model(ids)
    torch.testing.assert_close(logits[:, :12], alone, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(logits).all()


def test_output_projection_is_the_input_embedding(small_vocab_model):
    model = small_vocab_model
    names = [name for name, _ in model.named_parameters()]
    assert model.lm_head is None and not any("lm_head" in n for n in names)
    ids = torch.randint(0, 512, (1, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), model.hidden_states(ids) @ model.token_embeddings.weight.T)
    model.zero_grad()
    model(ids)[0, -1, 3].backward()
    assert model.token_embeddings.weight.grad[3].abs().sum() > 0  # the head uses row 3 of the embedding
    model.zero_grad()


def test_untied_head_is_a_separate_parameter():
    config = OpenELMConfig.named("tiny", vocab_size=128, share_input_output_layers=False)
    model = OpenELM(config)
    assert model.lm_head is not None
    assert model.num_parameters() == config.num_parameters()
    assert model.lm_head.weight.data_ptr() != model.token_embeddings.weight.data_ptr()


def test_initialisation_statistics_follow_corenet():
    torch.manual_seed(0)
    config = OpenELMConfig.named("small", vocab_size=4096)
    model = OpenELM(config)
    d, layers = config.model_dim, config.num_transformer_layers
    residual_std = d**-0.5 * (2 * layers) ** -0.5

    def close(tensor, std):
        assert abs(tensor.mean().item()) < 0.05 * std
        assert tensor.std().item() == pytest.approx(std, rel=0.03)

    close(model.token_embeddings.weight, d**-0.5)
    for layer in model.layers:
        close(layer.attn.qkv_proj.weight, d**-0.5)
        close(layer.ffn.proj_1.weight, d**-0.5)
        close(layer.attn.out_proj.weight, residual_std)
        close(layer.ffn.proj_2.weight, residual_std)
    norms = [p for n, p in model.named_parameters() if n.endswith("norm.weight")]
    assert len(norms) == 4 * layers + 1
    assert all(torch.equal(p, torch.ones_like(p)) for p in norms)
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]


def test_seeded_construction_is_deterministic():
    config = OpenELMConfig.named("tiny", vocab_size=256)
    torch.manual_seed(11)
    first = OpenELM(config).state_dict()
    torch.manual_seed(11)
    second = OpenELM(config).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_bfloat16_forward_tracks_float32(small_vocab_model):
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full = small_vocab_model(ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = small_vocab_model(ids)
    assert low.dtype == torch.bfloat16
    cosine = torch.nn.functional.cosine_similarity(full.flatten(), low.float().flatten(), dim=0)
    assert cosine > 0.99


def test_rejects_bad_input_shapes(small_vocab_model):
    with pytest.raises(ValueError, match="batch, seq_len"):
        small_vocab_model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="rope_max_length"):
        small_vocab_model(torch.zeros(1, 4097, dtype=torch.long))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = OpenELM(OpenELMConfig.named("tiny", vocab_size=256)).train()
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(7))
    segments = torch.tensor([[0] * 8 + [1] * 8, [0] * 16])
    grads = []
    for flag in (False, True):
        model.gradient_checkpointing = flag
        model.zero_grad()
        model(ids, segment_ids=segments).logsumexp(-1).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5)
