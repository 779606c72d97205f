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
    raise AssertionError(f"unexpected prompt: {system[:60]!r}")
