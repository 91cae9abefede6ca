"""KV-cached generation agrees with the plain forward pass."""

from __future__ import annotations

import pytest
import torch

from elm_data.core.errors import InvalidValue
from elm_data.model import OpenELM, OpenELMConfig, generate
from elm_data.model.generate import generate_text, sample_next


@pytest.fixture(scope="module")
def model() -> OpenELM:
    torch.manual_seed(0)
    return OpenELM(OpenELMConfig.named("tiny", vocab_size=384)).eval()


def test_greedy_cached_generation_matches_full_forward_at_every_step(model):
    prompt = torch.randint(0, 384, (2, 7), generator=torch.Generator().manual_seed(1))
    tokens, step_logits = generate(model, prompt, max_new_tokens=12, return_logits=True)
    assert tokens.shape == (2, 19) and torch.equal(tokens[:, :7], prompt)
    with torch.no_grad():
        full = model(tokens)
    for step, cached in enumerate(step_logits):
        torch.testing.assert_close(cached, full[:, 6 + step], atol=1e-4, rtol=1e-4)
    # greedy tokens are the argmax of the uncached logits
    assert torch.equal(tokens[:, 7:], full[:, 6:-1].argmax(-1))


def test_chunked_prefill_through_the_cache_matches_full_forward(model):
    ids = torch.randint(0, 384, (1, 20), generator=torch.Generator().manual_seed(2))
    cache = model.new_cache(1, max_length=20)
    with torch.no_grad():
        first = model(ids[:, :8], cache=cache)  # prefill
        second = model(ids[:, 8:15], cache=cache)  # a multi-token chunk after cached positions
        third = model(ids[:, 15:], cache=cache)
        full = model(ids)
    torch.testing.assert_close(torch.cat([first, second, third], dim=1), full, atol=1e-4, rtol=1e-4)
    assert cache.length == 20
    with pytest.raises(ValueError, match="KV cache full"), torch.no_grad():
        model(ids[:, :1], cache=cache)


def test_sampling_is_seeded_and_respects_top_k(model):
    prompt = torch.randint(0, 384, (1, 5), generator=torch.Generator().manual_seed(3))
    run = [
        generate(model, prompt, 10, temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(9))
        for _ in range(2)
    ]
    assert torch.equal(run[0], run[1])
    _, step_logits = generate(
        model,
        prompt,
        10,
        temperature=1.0,
        top_k=3,
        generator=torch.Generator().manual_seed(9),
        return_logits=True,
    )
    for step, logits in enumerate(step_logits):
        top3 = logits.topk(3, dim=-1).indices[0].tolist()
        assert run[0][0, 5 + step].item() in top3


def test_sample_next_top_k_one_is_greedy_and_temperature_validated():
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.9]])
    assert sample_next(logits, temperature=5.0, top_k=1).item() == 1
    assert sample_next(logits).item() == 1
    with pytest.raises(InvalidValue, match="temperature"):
        sample_next(logits, temperature=-1.0)


def test_generation_stops_when_every_sequence_emitted_eos(model):
    prompt = torch.randint(0, 384, (1, 4), generator=torch.Generator().manual_seed(4))
    greedy = generate(model, prompt, 6)
    eos = greedy[0, 5].item()  # the second generated token, used as the stop token
    stopped = generate(model, prompt, 6, eos_token_id=eos)
    assert stopped[0, -1].item() == eos and stopped.shape[1] <= 6


def test_generate_text_with_the_llama_tokenizer(tokenizer):
    torch.manual_seed(0)
    model = OpenELM(OpenELMConfig.named("tiny")).eval()  # the full 32000-token LLaMA vocabulary
    prompt_ids = [1, *tokenizer.encode("The capital of France is")]
    text = generate_text(model, tokenizer, "The capital of France is", max_new_tokens=6)
    expected = generate(model, torch.tensor([prompt_ids]), 6)[0, len(prompt_ids) :].tolist()
    assert isinstance(text, str) and text == tokenizer.decode(expected)


def test_an_empty_prompt_is_a_user_error(model):
    with pytest.raises(InvalidValue, match="input_ids"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), max_new_tokens=1)
