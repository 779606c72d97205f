"""Scripted responders for the loopback OpenAI server: a competent model that answers explainer and simulator
prompts from the prompt text alone, shared by the end-to-end, pipeline and fault tests."""

from __future__ import annotations

import re
from collections import Counter


def unescape_token(token: str) -> str:
    """Undo the prompt's token escaping (`\\n`, `\\t`, and the display-only `␣`)."""
    return token.replace("␣", " ").replace("\\n", "\n").replace("\\t", "\t")


def competent_model(body: dict) -> str:
    """Answers explainer and simulator prompts the way a capable LLM would, from the prompt text alone."""
    messages = body["messages"]
    system, request = messages[0]["content"], messages[-1]["content"]
    if system.startswith("You are studying a single neuron"):
        strong = [unescape_token(line.rsplit("\t", 1)[0]).strip() for line in request.splitlines()
                  if "\t" in line and int(line.rsplit("\t", 1)[1]) >= 5]
        if strong and sum(token.isdigit() for token in strong) > 0.8 * len(strong):
            return "This neuron fires on digits and numbers."
        word, _ = Counter(token.lower() for token in strong).most_common(1)[0]
        return f'the word "{word}"'
    if system.startswith("You predict how strongly"):
        description = re.search(r"^Description: (.*)$", request, re.MULTILINE).group(1)
        quoted = re.findall(r'"([^"]+)"', description)
        lines = []
        for line in request.split("Tokens:\n", 1)[1].splitlines():
            index, token = line.split("\t", 1)
            token = unescape_token(token).strip()
            if "digit" in description or "number" in description:
                value = 10 if token.isdigit() else 0
            else:
                value = 10 if token.lower() in {word.lower() for word in quoted} else 0
            lines.append(f"{index}\t{value}")
        return "\n".join(lines)
    if system.startswith("You test a short description"):
        return _classify(system, request)
    raise AssertionError(f"unexpected prompt: {system[:60]!r}")


def _described(description: str, text: str) -> bool:
    """Whether a piece of text is what the description names (digits, or one of its quoted words)."""
    if "digit" in description or "number" in description:
        return any(character.isdigit() for character in text)
    words = {word.lower() for word in re.findall(r'"([^"]+)"', description)}
    return any(piece.lower() in words for piece in re.findall(r"[A-Za-z]+", text))


def _classify(system: str, request: str) -> str:
    """Detection (does the passage hold what the description names?) and fuzzing (is every marked stretch such a
    thing?) verdicts, one `index<TAB>0|1` line per passage."""
    description = re.search(r"^Description: (.*)$", request, re.MULTILINE).group(1)
    fuzzing = "[[like this]]" in system
    lines = []
    for line in request.split("Passages:\n", 1)[1].splitlines():
        index, passage = line.split("\t", 1)
        passage = unescape_token(passage)
        if fuzzing:
            marked = re.findall(r"\[\[(.*?)\]\]", passage)
            verdict = bool(marked) and all(_described(description, stretch) for stretch in marked)
        else:
            verdict = _described(description, passage)
        lines.append(f"{index}\t{int(verdict)}")
    return "\n".join(lines)
