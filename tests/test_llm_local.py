"""The in-process backend on tiny random-init models (and the bundled SmolLM2 under -m slow)."""

from __future__ import annotations

import asyncio
import math

import pytest

from neuron_explainer.llm import Message, ResponseCache, SlotPrompt, UsageLedger, make_backend
from neuron_explainer.llm.local_backend import LocalBackend
from neuron_explainer.llm.local_slots import SlotScorer, reference_slot_distributions

CANDIDATES = [str(value) for value in range(11)] + ["the dog"]
PROMPTS = [
    SlotPrompt(prefix="Rate each token.\nThe quick brown fox.\n", pieces=("dog\t", "unknown\ncat\t", "unknown\n")),
    SlotPrompt(prefix="Rate each token.\nThe quick brown fox.\n",
               pieces=("a longer line of text here\t", "unknown\nMay\t", "unknown\n10\t", "unknown\n<end>")),
    SlotPrompt(prefix="Rate each token.\nThe quick brown fox.\n", pieces=("", "x\t", "unknown\n")),
    SlotPrompt(prefix="", pieces=("Numbers like 1\t", "unknown\n")),
    SlotPrompt(prefix="Another preamble: January February\n", pieces=("\t", "y\n", "z")),
]


def _assert_close(fast, slow) -> None:
    assert [len(slots) for slots in fast] == [len(slots) for slots in slow]
    for fast_slots, slow_slots in zip(fast, slow):
        for fast_slot, slow_slot in zip(fast_slots, slow_slots):
            for candidate in CANDIDATES:
                assert fast_slot[candidate] == pytest.approx(slow_slot[candidate], abs=1e-4)
                assert math.log(fast_slot[candidate]) == pytest.approx(math.log(slow_slot[candidate]), abs=1e-3)


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "gpt_neox"])
def test_batched_prefix_cached_slots_equal_the_naive_computation(tiny_model_factory, family: str) -> None:
    backend = LocalBackend(str(tiny_model_factory(family)), batch_size=2)
    assert backend.capabilities.slot_distributions and backend.capabilities.slot_multitoken_exact
    fast = asyncio.run(backend.slot_distributions(PROMPTS, CANDIDATES))
    slow = reference_slot_distributions(backend.loaded.model, backend.loaded.tokenizer, PROMPTS, CANDIDATES)
    _assert_close(fast, slow)
    # Three prefixes (one of them empty) were computed once each; a second call reuses them all.
    assert backend.scorer.prefix_computations == 3
    _assert_close(asyncio.run(backend.slot_distributions(PROMPTS[:2], CANDIDATES)), slow[:2])
    assert backend.scorer.prefix_computations == 3


def test_multi_token_candidates_are_products_of_conditional_probabilities(tiny_llama) -> None:
    import torch

    backend = LocalBackend(str(tiny_llama))
    model, tokenizer = backend.loaded.model, backend.loaded.tokenizer
    ten = tokenizer("10", add_special_tokens=False)["input_ids"]
    assert len(ten) == 2, "the tiny tokenizer splits 10 like SmolLM2 does"
    prompt = SlotPrompt(prefix="Rate each token.\n", pieces=("dog\t", "unknown\n"))
    [[slot]] = asyncio.run(backend.slot_distributions([prompt], ["1", "10"]))
    context = tokenizer("Rate each token.\n")["input_ids"] + tokenizer("dog\t", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        first = torch.softmax(model(input_ids=torch.tensor([context])).logits[0, -1], dim=-1)
        second = torch.softmax(model(input_ids=torch.tensor([context + ten[:1]])).logits[0, -1], dim=-1)
    assert slot["1"] == pytest.approx(float(first[ten[0]]), rel=1e-5)
    assert slot["10"] == pytest.approx(float(first[ten[0]] * second[ten[1]]), rel=1e-5)


def test_slot_without_preceding_text_is_rejected(tiny_llama) -> None:
    scorer = SlotScorer(*_model_and_tokenizer(tiny_llama))
    with pytest.raises(ValueError, match="no text before it"):
        scorer.score([SlotPrompt(prefix="", pieces=("", "x"))], ["1"])


def _model_and_tokenizer(directory):
    backend = LocalBackend(str(directory))
    return backend.loaded.model, backend.loaded.tokenizer


def test_generation_is_deterministic_and_batching_does_not_change_greedy_answers(tiny_llama) -> None:
    backend = make_backend(f"local:{tiny_llama}?batch=3")
    prompts = ["The quick brown fox", "Cats and dogs", "Return a list of the items; raise ValueError", "May"]
    batched = asyncio.run(backend.generate_many(prompts, max_tokens=6))
    one_by_one = [asyncio.run(backend.generate(prompt, max_tokens=6)) for prompt in prompts]
    assert [result.generations for result in batched] == [result.generations for result in one_by_one]
    sampled = [asyncio.run(backend.generate_many(prompts[:2], n=2, temperature=1.0, seed=7, max_tokens=6))
               for _ in range(2)]
    texts = [[generation.text for result in run for generation in result.generations] for run in sampled]
    assert texts[0] == texts[1] and len(set(texts[0])) > 1
    result = batched[0]
    assert result.usage.prompt_tokens == len(backend.loaded.tokenizer(prompts[0])["input_ids"])
    assert result.usage.completion_tokens == 6 and result.generations[0].finish_reason == "length"
    greedy_three = asyncio.run(backend.generate(prompts[0], n=3, max_tokens=6))
    assert greedy_three.generations == result.generations * 3


def test_generated_logprobs_and_stop_strings(tiny_llama) -> None:
    backend = LocalBackend(str(tiny_llama))
    result = asyncio.run(backend.generate("The quick brown", max_tokens=5, top_logprobs=3))
    generation = result.generations[0]
    assert len(generation.logprobs) == 5
    for item in generation.logprobs:
        assert len(item.top) == 3 and item.top[0][1] >= item.top[1][1] >= item.top[2][1]
        # Greedy: the generated token is the most likely one.
        assert item.logprob == pytest.approx(item.top[0][1])
    marker = generation.text[2:4]
    stopped = asyncio.run(backend.generate("The quick brown", max_tokens=5, stop=[marker]))
    assert stopped.generations[0].text == generation.text[: generation.text.index(marker)]
    assert stopped.generations[0].finish_reason == "stop"


def test_chat_template_is_applied_when_present(tiny_llama) -> None:
    backend = LocalBackend(str(tiny_llama))
    tokenizer = backend.loaded.tokenizer
    messages = [Message("user", "Cats and dogs")]
    plain = asyncio.run(backend.generate(messages, max_tokens=1))
    assert plain.usage.prompt_tokens == len(tokenizer("user: Cats and dogs\nassistant:")["input_ids"])
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    templated = asyncio.run(backend.generate(messages, max_tokens=1))
    expected = tokenizer("<user>Cats and dogs<assistant>", add_special_tokens=False)["input_ids"]
    assert templated.usage.prompt_tokens == len(expected)


def test_local_answers_are_cached_and_ledgered_at_zero_cost(tiny_llama, tmp_path) -> None:
    ledger = UsageLedger()
    backend = make_backend(f"local:{tiny_llama}", cache=ResponseCache(tmp_path / "c.sqlite"), ledger=ledger)
    first = asyncio.run(backend.slot_distributions(PROMPTS[:2], CANDIDATES))
    again = asyncio.run(backend.slot_distributions(PROMPTS[:2], CANDIDATES))
    assert again == first and backend.scorer.prefix_computations == 1
    generated = asyncio.run(backend.generate("The quick", max_tokens=3))
    assert asyncio.run(backend.generate("The quick", max_tokens=3)).generations == generated.generations
    assert [(entry.operation, entry.from_cache) for entry in ledger.entries] == [
        ("slots", False), ("slots", True), ("slots", True), ("generate", False), ("generate", True)]
    assert all(entry.cost_usd == 0.0 for entry in ledger.entries)
    assert ledger.entries[0].prompt_tokens > 0


def test_encoder_models_are_refused(tiny_model_factory) -> None:
    from neuron_explainer.core.errors import UserError

    with pytest.raises(UserError, match="causal"):
        make_backend(f"local:{tiny_model_factory('bert')}")


@pytest.mark.slow
def test_bundled_default_model_slots_and_chat() -> None:
    backend = make_backend("local:default")
    prompt = SlotPrompt(prefix="Predict how strongly each token matches 'animals', from 0 to 10.\n",
                        pieces=("cat\t", "unknown\nthe\t", "unknown\ndog\t", "unknown\n"))
    candidates = [str(value) for value in range(11)]
    fast = asyncio.run(backend.slot_distributions([prompt, prompt], candidates))
    slow = reference_slot_distributions(backend.loaded.model, backend.loaded.tokenizer, [prompt], candidates)
    for candidate in candidates:
        for slot in range(3):
            assert fast[1][slot][candidate] == pytest.approx(slow[0][slot][candidate], abs=1e-5)
    assert all(slot["10"] > 0 for slot in fast[0])
    answer = asyncio.run(backend.generate([Message("user", "Name one animal.")], max_tokens=8))
    assert answer.generations[0].text.strip()
    assert answer.usage.prompt_tokens > 10  # the chat template wraps the message
