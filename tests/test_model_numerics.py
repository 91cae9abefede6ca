"""Numerics shared with CoreNet / Hugging Face OpenELM: RMSNorm order in bf16, CoreNet's padding_index row."""

from __future__ import annotations

import pytest
import torch

from elm_data.model import OpenELM, OpenELMConfig
from elm_data.model.layers import RMSNorm

SMALL = {"num_transformer_layers": 2, "model_dim": 128, "head_dim": 32, "vocab_size": 512}


def corenet_rms_norm(module: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """CoreNet's / HF's RMSNorm, written out: normalise in float32, cast to x's dtype, then times the
    weight."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + module.eps)
    return normed.type_as(x) * module.weight


def weight_first_rms_norm(module: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """The order this project used before: weight multiplied in float32, then one cast."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + module.eps)
    return (normed * module.weight.float()).to(x.dtype)


def logits_with(model: OpenELM, norm, ids: torch.Tensor) -> torch.Tensor:
    """The model's logits with every RMSNorm's forward replaced by ``norm``."""
    originals = {}
    for module in model.modules():
        if isinstance(module, RMSNorm):
            originals[module] = module.forward
            module.forward = lambda x, m=module: norm(m, x)
    try:
        with torch.no_grad():
            return model(ids).float()
    finally:
        for module, forward in originals.items():
            module.forward = forward


@pytest.fixture(scope="module")
def bf16_model() -> OpenELM:
    """A small bf16 model whose norm weights are far from one (as in any trained checkpoint)."""
    torch.manual_seed(0)
    model = OpenELM(OpenELMConfig(**SMALL))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, RMSNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 3 + 0.2)
    return model.to(torch.bfloat16).eval()


def test_bf16_rms_norm_equals_the_corenet_order_with_non_unit_weights(bf16_model):
    x = torch.randn(3, 17, 128, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16) * 4
    norm = bf16_model.layers[0].attn_norm
    with torch.no_grad():
        assert torch.equal(norm(x), corenet_rms_norm(norm, x))
        # the order is visible
        assert not torch.equal(weight_first_rms_norm(norm, x), corenet_rms_norm(norm, x))


def test_bf16_logits_equal_a_corenet_order_reference(bf16_model):
    ids = torch.randint(0, SMALL["vocab_size"], (2, 48), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = bf16_model(ids).float()
    reference = logits_with(bf16_model, corenet_rms_norm, ids)
    old_order = logits_with(bf16_model, weight_first_rms_norm, ids)
    assert torch.equal(ours, reference)
    assert (old_order - reference).abs().max() > 1e-2  # the reference tells the two orders apart


def test_float32_is_unchanged_by_the_order():
    torch.manual_seed(0)
    model = OpenELM(OpenELMConfig(**SMALL)).eval()
    ids = torch.randint(0, SMALL["vocab_size"], (1, 20), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(
        logits_with(model, corenet_rms_norm, ids),
        logits_with(model, weight_first_rms_norm, ids),
        atol=0,
        rtol=0,
    )


def embedding_row_gradient(padding_index: int | None, tied: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of embedding row 32000 and of row 5 after one loss on inputs that contain id 32000."""
    torch.manual_seed(0)
    config = OpenELMConfig(
        num_transformer_layers=2,
        model_dim=64,
        head_dim=16,
        vocab_size=32128,
        padding_index=padding_index,
        share_input_output_layers=tied,
    )
    model = OpenELM(config)
    ids = torch.tensor([[1, 5, 900, 32000, 32000, 5, 77, 32000]])
    logits = model(ids)
    torch.nn.functional.cross_entropy(logits[0, :-1], torch.tensor([5, 900, 7, 2, 5, 77, 3])).backward()
    grad = model.token_embeddings.weight.grad
    return grad[32000].clone(), grad[5].clone()


def test_padding_index_row_gets_no_input_side_gradient():
    pad_row, other_row = embedding_row_gradient(padding_index=32000, tied=False)
    assert torch.count_nonzero(pad_row) == 0 and torch.count_nonzero(other_row) > 0
    without, _ = embedding_row_gradient(padding_index=None, tied=False)
    assert without.abs().max() > 0  # without the setting the pad id's inputs do train its row


def test_padding_index_with_tied_head_keeps_only_the_output_side_gradient():
    pad_row, _ = embedding_row_gradient(padding_index=32000, tied=True)
    without, _ = embedding_row_gradient(padding_index=None, tied=True)
    assert pad_row.abs().max() > 0  # still the pad id's output logit
    assert not torch.allclose(pad_row, without)  # the input-side part is gone


def test_padding_index_row_is_initialised_like_every_row_and_round_trips():
    torch.manual_seed(0)
    config = OpenELMConfig.named("tiny", vocab_size=32128, padding_index=32000)
    model = OpenELM(config)
    assert model.token_embeddings.padding_idx == 32000
    assert model.token_embeddings.weight[32000].abs().sum() > 0  # CoreNet's reset_parameters re-draws it
    assert OpenELMConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="padding_index"):
        OpenELMConfig.named("tiny", padding_index=32000)  # outside a 32000-row vocabulary
