"""The eager attention switch (``OpenELMConfig.attention``) gives SDPA's results; SDPA backends by context."""

from __future__ import annotations

import pytest
import torch

from elm_data.model.config import OpenELMConfig
from elm_data.model.openelm import OpenELM
from elm_data.trainer.bench.efficiency import attention_context

SHAPE = {"num_transformer_layers": 2, "model_dim": 128, "head_dim": 32, "vocab_size": 512}


def pair() -> tuple[OpenELM, OpenELM]:
    torch.manual_seed(0)
    sdpa = OpenELM(OpenELMConfig(**SHAPE))
    eager = OpenELM(OpenELMConfig(**SHAPE, attention="eager"))
    eager.load_state_dict(sdpa.state_dict())
    return sdpa.eval(), eager.eval()


@pytest.mark.slow
def test_eager_matches_sdpa_causal_and_with_document_masks():
    sdpa, eager = pair()
    ids = torch.randint(0, 512, (2, 24))
    segments = torch.tensor([[0] * 10 + [1] * 14, [0] * 24])
    with torch.no_grad():
        torch.testing.assert_close(eager(ids), sdpa(ids), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(eager(ids, segment_ids=segments), sdpa(ids, segment_ids=segments))


def test_eager_matches_sdpa_with_a_kv_cache():
    sdpa, eager = pair()
    ids = torch.randint(0, 512, (1, 12))
    with torch.no_grad():
        outs = []
        for model in (sdpa, eager):
            cache = model.new_cache(1, 16)
            model(ids[:, :8], cache=cache)
            outs.append((model(ids[:, 8:11], cache=cache), model(ids[:, 11:], cache=cache)))
    for ours, theirs in zip(outs[1], outs[0], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_eager_gradients_match_sdpa():
    sdpa, eager = pair()
    ids = torch.randint(0, 512, (2, 16))
    for model in (sdpa, eager):
        model(ids).logsumexp(-1).sum().backward()
    torch.testing.assert_close(
        eager.layers[0].attn.qkv_proj.weight.grad, sdpa.layers[0].attn.qkv_proj.weight.grad
    )


def test_unknown_attention_is_refused():
    with pytest.raises(ValueError, match="attention"):
        OpenELMConfig(**SHAPE, attention="flashy")


def test_sdpa_backend_context_restricts_the_kernel():
    q = torch.randn(1, 4, 8, 16)
    with attention_context("math"):
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    with attention_context("efficient"), pytest.raises(RuntimeError):  # no CPU kernel for this backend
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
