"""The token-activation-pair explainer prompt: instructions, few-shot examples, the neuron's scaled windows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from neuron_explainer.activations.records import Window
from neuron_explainer.activations.weight_views import NeuronWeightView
from neuron_explainer.core.prompts import PromptFiles, load_prompt_files
from neuron_explainer.explain.formatting import format_pairs, printable_token, scale_activations
from neuron_explainer.explain.types import Polarity
from neuron_explainer.llm.base import Message

PROMPT_FILES = ("explainer/token_pairs/system.md", "explainer/token_pairs/request.md",
                "explainer/token_pairs/nonzero.md", "explainer/token_pairs/examples.json")
WEIGHTS_FILE = "explainer/token_pairs/weights.md"
PROMPT_FILES_WITH_WEIGHTS = (*PROMPT_FILES, WEIGHTS_FILE)
"""The variant that also shows the neuron's weight views (`--explain-with-weights`); its own content hash."""

CHARACTERS_PER_TOKEN = 3.0
"""Conservative characters-per-token estimate for budgeting prompts without the backend's tokenizer."""
MESSAGE_OVERHEAD_TOKENS = 8
"""Allowance per chat message for the template's role markers."""
MIN_WINDOWS_BEFORE_EXAMPLES = 3
"""Windows kept before few-shot examples are dropped to make room."""
MIN_TRUNCATED_WINDOW = 8
"""Shortest window excerpt kept when even one whole window does not fit the context."""


@dataclass(frozen=True)
class ScaledWindow:
    """A window ready for the prompt: tokens with 0-10 activations."""

    window_id: int | None
    """Record-store id (None for few-shot examples)."""
    tokens: tuple[str, ...]
    """Token strings (raw; escaped when formatted)."""
    values: tuple[int, ...]
    """Scaled activations."""


@dataclass(frozen=True)
class FewShotExample:
    """A hand-written example neuron: windows with 0-10 activations and the answer we want."""

    explanation: str
    """The target phrase."""
    windows: tuple[ScaledWindow, ...]
    """Its windows."""


@dataclass(frozen=True)
class ExplainerPrompt:
    """A built prompt and what it contains."""

    messages: tuple[Message, ...]
    """System, few-shot turns, and the request."""
    shown_windows: tuple[ScaledWindow, ...]
    """The neuron's windows that made it into the prompt (after trimming)."""
    few_shot_count: int
    """Few-shot examples kept."""
    truncated: bool
    """True when a window had to be cut to fit the context."""
    nonzero_repeated: bool
    """True when the non-zero pairs were listed again."""
    estimated_tokens: int
    """Estimated prompt tokens."""


def estimate_tokens(messages: Sequence[Message]) -> int:
    """Rough prompt size in tokens (over- rather than under-estimates for English and escaped tokens)."""
    return sum(int(len(message.content) / CHARACTERS_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS for message in messages)


def scale_windows(windows: Sequence[Window]) -> tuple[ScaledWindow, ...]:
    """Scale every window with the maximum over all of them (the explain windows of one neuron)."""
    max_activation = max((value for window in windows for value in window.activations), default=0.0)
    return tuple(ScaledWindow(window.window_id, window.tokens, scale_activations(window.activations, max_activation))
                 for window in windows)


def load_examples(files: PromptFiles) -> tuple[FewShotExample, ...]:
    """The few-shot examples file as typed examples."""
    examples = []
    for entry in files.json("explainer/token_pairs/examples.json"):
        windows = tuple(ScaledWindow(None, tuple(token for token, _ in pairs), tuple(int(value) for _, value in pairs))
                        for pairs in entry["windows"])
        examples.append(FewShotExample(explanation=entry["explanation"], windows=windows))
    return tuple(examples)


def weight_view_text(files: PromptFiles, view: NeuronWeightView, *, polarity: Polarity, tokens: int) -> str:
    """The weights paragraph of the request: `tokens` tokens per list, quoted and escaped like the passages.

    A negative explanation describes the negated activation, which pushes the output and reads the input the
    other way round, so the promoted/suppressed and exciting/inhibiting lists swap."""
    lists = {"promoted": view.promoted, "suppressed": view.suppressed, "exciting": view.exciting,
             "inhibiting": view.inhibiting}
    if polarity is Polarity.NEGATIVE:
        lists = {"promoted": view.suppressed, "suppressed": view.promoted, "exciting": view.inhibiting,
                 "inhibiting": view.exciting}
    return files.render(WEIGHTS_FILE, **{kind: ", ".join(f'"{printable_token(item.token)}"' for item in items[:tokens])
                                         for kind, items in lists.items()})


def _request_text(files: PromptFiles, windows: Sequence[ScaledWindow], *, nonzero_threshold: float,
                  weights: str = "") -> tuple[str, bool]:
    passages = "\n".join(f"--- passage {index} ---\n{format_pairs(window.tokens, window.values)}"
                         for index, window in enumerate(windows, start=1))
    values = [value for window in windows for value in window.values]
    nonzero_pairs = [(token, value) for window in windows for token, value in zip(window.tokens, window.values)
                     if value > 0]
    repeat = bool(values) and 0 < len(nonzero_pairs) < nonzero_threshold * len(values)
    nonzero = ""
    if repeat:
        nonzero = "\n" + files.render("explainer/token_pairs/nonzero.md", pairs=format_pairs(
            [token for token, _ in nonzero_pairs], [value for _, value in nonzero_pairs]))
    if weights:
        # After the passages and before the question, in the slot the non-zero repeat uses, so request.md (and the
        # hash of every result made without weights) stays as it was.
        nonzero += "\n" + weights
    return files.render("explainer/token_pairs/request.md", passages=passages, nonzero=nonzero), repeat


def _messages(files: PromptFiles, examples: Sequence[FewShotExample], windows: Sequence[ScaledWindow], *,
              nonzero_threshold: float, weights: str = "") -> tuple[tuple[Message, ...], bool]:
    messages = [Message("system", files.text("explainer/token_pairs/system.md").strip())]
    for example in examples:
        text, _ = _request_text(files, example.windows, nonzero_threshold=nonzero_threshold)
        messages += [Message("user", text), Message("assistant", example.explanation)]
    text, repeated = _request_text(files, windows, nonzero_threshold=nonzero_threshold, weights=weights)
    messages.append(Message("user", text))
    return tuple(messages), repeated


def _excerpt(window: ScaledWindow, length: int) -> ScaledWindow:
    """The `length` tokens centred on the window's strongest token."""
    peak = max(range(len(window.values)), key=window.values.__getitem__)
    start = max(0, min(peak - length // 2, len(window.values) - length))
    return ScaledWindow(window.window_id, window.tokens[start:start + length], window.values[start:start + length])


def build_prompt(windows: Sequence[ScaledWindow], *, token_budget: int, nonzero_threshold: float = 0.2,
                 files: PromptFiles | None = None, weights: str = "") -> ExplainerPrompt | None:
    """Build the explainer prompt within `token_budget` estimated tokens; None if nothing useful fits.

    `weights` (from `weight_view_text`) goes into the neuron's request only: the few-shot examples have no weights.

    Trimming order: drop the weakest windows down to a few, then few-shot examples, then more windows down to
    one, then cut that window to an excerpt around its peak.
    """
    files = files or load_prompt_files(PROMPT_FILES)
    examples = list(load_examples(files))
    shown = list(windows)
    truncated = False
    while True:
        messages, repeated = _messages(files, examples, shown, nonzero_threshold=nonzero_threshold, weights=weights)
        estimated = estimate_tokens(messages)
        if estimated <= token_budget:
            return ExplainerPrompt(messages=messages, shown_windows=tuple(shown), few_shot_count=len(examples),
                                   truncated=truncated, nonzero_repeated=repeated, estimated_tokens=estimated)
        if len(shown) > MIN_WINDOWS_BEFORE_EXAMPLES:
            shown.pop()
        elif examples:
            examples.pop()
        elif len(shown) > 1:
            shown.pop()
        elif shown and len(shown[0].tokens) > MIN_TRUNCATED_WINDOW:
            shown = [_excerpt(shown[0], max(MIN_TRUNCATED_WINDOW, len(shown[0].tokens) // 2))]
            truncated = True
        else:
            return None


def render_as_text(messages: Sequence[Message]) -> str:
    """A chat as one completion prompt, for backends without chat support; ends where the answer starts."""
    labels = {"system": "Instructions", "user": "Question", "assistant": "Answer"}
    parts = [f"{labels.get(message.role, message.role)}:\n{message.content}" for message in messages]
    return "\n\n".join(parts) + "\n\nAnswer:\n"
