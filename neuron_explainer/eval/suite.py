"""Planted-neuron suites: synthetic neurons with a known concept, read from TOML (the built-in suite uses the same
format as user files; see data/planted/builtin.toml and docs/evaluation.md).

A suite file:

    [suite]
    name = "my-suite"             # becomes the record store's model id `planted:my-suite`
    seed = 0                      # seeds grading and noise

    [[neuron]]
    name = "digits"               # unique within the suite
    category = "token-class"      # free text; the report groups by it
    concept = 'digits ("0"-"9")'  # what a perfect explanation would say (its score is the concept reference)
    value = 4.0                   # peak activation (default 1)
    jitter = 0.3                  # graded: each token type fires at value * (1 - jitter * u), u fixed per type
    noise = 0.05                  # Gaussian noise at every token, std = noise * value (default 0)
    rule = { kind = "token", pattern = '\\d+' }
    checker = { keywords = ["digit", "number"], members = ["0", "1", "2"], min_members = 2 }

Rule kinds (each fires `value`, times its grading, on the tokens it selects):
- `token`: the token (surrounding whitespace stripped unless `strip = false`) fully matches `pattern`.
- `words`: tokens that overlap a whole-word occurrence of one of `words` in the window text; optional `weights`
  (word -> multiplier). Case-insensitive unless `ignore_case = false`.
- `text`: tokens that overlap a match of `pattern` in the window text; `fire_on` = `all` | `first` | `last`.
- `after`: a token right after a token that fully matches `after` (stripped), optionally itself matching `pattern`.
- `position`: tokens at `positions` (0 = first, -1 = last), optional `weights` per position.
- `inside`: tokens with a visible character strictly between `open` and `close`, delimiters excluded. Nesting
  is counted when they differ; when they are equal (quotes, backticks) a run of them toggles and a pair must
  close on the same line.

A checker passes an explanation when any keyword starts a word of it, any `regex` matches it, or it names at
least `min_members` of `members` (as whole words, case-insensitively).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from neuron_explainer.core.errors import UserError
from neuron_explainer.core.paths import DATA_DIR

BUILTIN_SUITE_PATH = DATA_DIR / "planted" / "builtin.toml"
"""The built-in suite."""
MODEL_ID_PREFIX = "planted:"
"""Record stores of planted neurons carry the model id `planted:<suite name>`."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class RuleKind(str, Enum):
    """How a planted neuron selects the tokens it fires on."""

    TOKEN = "token"
    WORDS = "words"
    TEXT = "text"
    AFTER = "after"
    POSITION = "position"
    INSIDE = "inside"


class FireOn(str, Enum):
    """Which tokens of a `text` match fire."""

    ALL = "all"
    FIRST = "first"
    LAST = "last"


@dataclass(frozen=True)
class Rule:
    """The activation rule of a planted neuron (fields not used by its kind keep their defaults)."""

    kind: RuleKind
    """Which tokens are selected."""
    pattern: str = ""
    """Regex: the token (`token`, `after`) or the window text (`text`)."""
    words: tuple[str, ...] = ()
    """Words of a `words` rule."""
    weights: tuple[tuple[str, float], ...] = ()
    """`words`: (word, multiplier) pairs; words not listed use 1."""
    after: str = ""
    """`after`: regex the previous token (stripped) must fully match."""
    positions: tuple[int, ...] = ()
    """`position`: window positions (negative counts from the end)."""
    position_weights: tuple[float, ...] = ()
    """`position`: multiplier per position (empty: all 1)."""
    open: str = ""
    """`inside`: opening delimiter."""
    close: str = ""
    """`inside`: closing delimiter."""
    ignore_case: bool = False
    """Case-insensitive matching (default true for `words`, false otherwise)."""
    strip: bool = True
    """`token`/`after`: strip surrounding whitespace from tokens before matching."""
    fire_on: FireOn = FireOn.ALL
    """`text`: which tokens of a match fire."""


@dataclass(frozen=True)
class Checker:
    """Decides whether an explanation names the planted concept."""

    keywords: tuple[str, ...] = ()
    """Any of these starting a word of the explanation (case-insensitive) passes."""
    regex: tuple[str, ...] = ()
    """Any of these matching the explanation (case-insensitive) passes."""
    members: tuple[str, ...] = ()
    """Instances of the concept (words, tokens)."""
    min_members: int = 2
    """Naming at least this many distinct members passes."""

    def passes(self, explanation: str) -> bool:
        """True when the explanation names the concept."""
        return bool(self.matched(explanation))

    def matched(self, explanation: str) -> list[str]:
        """What in the explanation made it pass (empty when it does not)."""
        found = [keyword for keyword in self.keywords
                 if re.search(r"(?<!\w)" + re.escape(keyword), explanation, re.IGNORECASE)]
        found += [pattern for pattern in self.regex if re.search(pattern, explanation, re.IGNORECASE)]
        named = [member for member in self.members if _names_member(explanation, member)]
        if len(named) >= self.min_members:
            found += named
        return found


def _names_member(explanation: str, member: str) -> bool:
    # Word characters at the member's edges must not continue into the explanation's neighbouring characters.
    left = r"(?<!\w)" if member[:1].isalnum() or member[:1] == "_" else ""
    right = r"(?!\w)" if member[-1:].isalnum() or member[-1:] == "_" else ""
    return re.search(left + re.escape(member) + right, explanation, re.IGNORECASE) is not None


@dataclass(frozen=True)
class PlantedNeuron:
    """A synthetic neuron whose concept is known."""

    name: str
    """Unique name within the suite."""
    category: str
    """Group in the report (e.g. token, token-class, word-list, multi-token, position, context)."""
    concept: str
    """The true concept, written as a good explanation would be (scored as the concept reference point)."""
    rule: Rule
    """Which tokens fire."""
    checker: Checker
    """Whether an explanation names the concept."""
    value: float = 1.0
    """Peak activation."""
    jitter: float = 0.0
    """Grading: each token type fires at value * (1 - jitter * u) with u in [0, 1) fixed per (neuron, token)."""
    noise: float = 0.0
    """Std of Gaussian noise added at every token, as a fraction of `value`."""


@dataclass(frozen=True)
class PlantedSuite:
    """A named set of planted neurons; neuron i is stored as layer 0, neuron i of the planted record store."""

    name: str
    """Suite name (the store's model id is `planted:<name>`)."""
    neurons: tuple[PlantedNeuron, ...]
    """The neurons, in file order."""
    seed: int = 0
    """Seeds grading and noise."""
    description: str = ""
    """Free text."""
    source: str = ""
    """The file it was read from."""

    @property
    def model_id(self) -> str:
        """Model id of record stores built from this suite."""
        return MODEL_ID_PREFIX + self.name

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready definition (stored in the record store's manifest)."""
        values = asdict(self)
        values.pop("source")
        return json.loads(json.dumps(values, default=lambda item: item.value if isinstance(item, Enum) else item))

    @property
    def content_hash(self) -> str:
        """Hash of the definition (name, seed and every neuron), independent of file layout and comments."""
        canonical = json.dumps(self.as_dict(), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def select(self, *, limit: int | None = None, only: tuple[str, ...] = ()) -> list[int]:
        """Indices of the neurons to evaluate: those named or in a category listed in `only` (all when empty),
        then the first `limit` of them; UserError when nothing matches."""
        if limit is not None and limit < 1:
            raise UserError(f"--limit must be at least 1, got {limit}")
        wanted = set(only)
        unknown = wanted - {neuron.name for neuron in self.neurons} - {neuron.category for neuron in self.neurons}
        if unknown:
            raise UserError(f"no planted neuron or category named {', '.join(sorted(unknown))} in suite {self.name}")
        indices = [index for index, neuron in enumerate(self.neurons)
                   if not wanted or neuron.name in wanted or neuron.category in wanted]
        return indices[:limit] if limit is not None else indices


# --- reading ------------------------------------------------------------------------------------------------

_SUITE_KEYS = {"name", "seed", "description"}
_NEURON_KEYS = {"name", "category", "concept", "rule", "checker", "value", "jitter", "noise"}
_CHECKER_KEYS = {"keywords", "regex", "members", "min_members"}
_RULE_KEYS = {
    RuleKind.TOKEN: {"pattern", "ignore_case", "strip"},
    RuleKind.WORDS: {"words", "weights", "ignore_case"},
    RuleKind.TEXT: {"pattern", "ignore_case", "fire_on"},
    RuleKind.AFTER: {"after", "pattern", "ignore_case", "strip"},
    RuleKind.POSITION: {"positions", "weights"},
    RuleKind.INSIDE: {"open", "close"},
}
_REQUIRED_RULE_KEYS = {
    RuleKind.TOKEN: {"pattern"}, RuleKind.WORDS: {"words"}, RuleKind.TEXT: {"pattern"}, RuleKind.AFTER: {"after"},
    RuleKind.POSITION: {"positions"}, RuleKind.INSIDE: {"open", "close"},
}


def load_suite(path: str | Path | None = None) -> PlantedSuite:
    """Read a suite file (the built-in suite when `path` is None); UserError naming the problem if malformed."""
    source = Path(path) if path is not None else BUILTIN_SUITE_PATH
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"planted-neuron file {source} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read planted-neuron file {source}: {exc}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"planted-neuron file {source} is not valid TOML: {exc}") from None
    return parse_suite(document, source=str(source))


def parse_suite(document: Mapping[str, Any], *, source: str = "<suite>") -> PlantedSuite:
    """Build a suite from a parsed TOML document; UserError naming the file, neuron and field on any problem."""
    unknown = set(document) - {"suite", "neuron"}
    if unknown:
        raise UserError(f"{source}: unknown top-level key(s) {', '.join(sorted(unknown))}; expected [suite] and "
                        "[[neuron]] tables")
    header = document.get("suite", {})
    if not isinstance(header, Mapping):
        raise UserError(f"{source}: [suite] must be a table")
    _check_keys(header, _SUITE_KEYS, f"{source}: [suite]")
    name = header.get("name", Path(source).stem if source != "<suite>" else "suite")
    if not isinstance(name, str) or not _NAME.match(name):
        raise UserError(f"{source}: suite name {name!r} must be letters, digits, '.', '_' or '-'")
    seed = _integer(header.get("seed", 0), f"{source}: suite seed")
    description = header.get("description", "")
    if not isinstance(description, str):
        raise UserError(f"{source}: suite description must be a string")
    entries = document.get("neuron")
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{source}: no [[neuron]] entries")
    neurons: list[PlantedNeuron] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries, start=1):
        where = f"{source}: neuron #{index}"
        if not isinstance(entry, Mapping):
            raise UserError(f"{where} must be a table")
        neuron = _parse_neuron(entry, where)
        if neuron.name in seen:
            raise UserError(f"{where}: duplicate neuron name {neuron.name!r}")
        seen.add(neuron.name)
        neurons.append(neuron)
    return PlantedSuite(name=name, neurons=tuple(neurons), seed=seed, description=description, source=source)


def _parse_neuron(entry: Mapping[str, Any], where: str) -> PlantedNeuron:
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise UserError(f"{where}: `name` must be a string of letters, digits, '.', '_' or '-' (got {name!r})")
    where = f"{where} ({name!r})"
    _check_keys(entry, _NEURON_KEYS, where)
    for key in ("concept", "rule", "checker"):
        if key not in entry:
            raise UserError(f"{where}: missing `{key}`")
    concept = entry["concept"]
    if not isinstance(concept, str) or not concept.strip():
        raise UserError(f"{where}: `concept` must be a non-empty string")
    category = entry.get("category", "other")
    if not isinstance(category, str) or not category.strip():
        raise UserError(f"{where}: `category` must be a non-empty string")
    value = _number(entry.get("value", 1.0), f"{where}: `value`")
    if not value > 0:
        raise UserError(f"{where}: `value` must be positive (got {value})")
    jitter = _number(entry.get("jitter", 0.0), f"{where}: `jitter`")
    if not 0 <= jitter < 1:
        raise UserError(f"{where}: `jitter` must be in [0, 1) (got {jitter})")
    noise = _number(entry.get("noise", 0.0), f"{where}: `noise`")
    if noise < 0:
        raise UserError(f"{where}: `noise` must not be negative (got {noise})")
    return PlantedNeuron(name=name, category=category.strip(), concept=concept.strip(),
                         rule=_parse_rule(entry["rule"], f"{where}: rule"),
                         checker=_parse_checker(entry["checker"], f"{where}: checker"),
                         value=value, jitter=jitter, noise=noise)


def _parse_rule(table: Any, where: str) -> Rule:
    if not isinstance(table, Mapping):
        raise UserError(f"{where} must be a table such as {{ kind = \"token\", pattern = '...' }}")
    kinds = ", ".join(kind.value for kind in RuleKind)
    try:
        kind = RuleKind(table.get("kind"))
    except ValueError:
        raise UserError(f"{where}: `kind` must be one of {kinds} (got {table.get('kind')!r})") from None
    _check_keys(table, _RULE_KEYS[kind] | {"kind"}, f"{where} ({kind.value})")
    missing = _REQUIRED_RULE_KEYS[kind] - set(table)
    if missing:
        raise UserError(f"{where}: the {kind.value} rule needs {', '.join(sorted(missing))}")
    values: dict[str, Any] = {"kind": kind}
    if "pattern" in table:
        values["pattern"] = _regex(table["pattern"], f"{where}: `pattern`")
    if "after" in table:
        values["after"] = _regex(table["after"], f"{where}: `after`")
    if "ignore_case" in table:
        values["ignore_case"] = _boolean(table["ignore_case"], f"{where}: `ignore_case`")
    elif kind is RuleKind.WORDS:
        values["ignore_case"] = True
    if "strip" in table:
        values["strip"] = _boolean(table["strip"], f"{where}: `strip`")
    if "fire_on" in table:
        try:
            values["fire_on"] = FireOn(table["fire_on"])
        except ValueError:
            raise UserError(f"{where}: `fire_on` must be all, first or last (got {table['fire_on']!r})") from None
    if kind is RuleKind.WORDS:
        words = _strings(table["words"], f"{where}: `words`")
        values["words"] = words
        weights = table.get("weights", {})
        if not isinstance(weights, Mapping):
            raise UserError(f"{where}: `weights` must be a table of word = multiplier")
        folded = {word.casefold() if values["ignore_case"] else word for word in words}
        pairs = []
        for word, weight in weights.items():
            if (word.casefold() if values["ignore_case"] else word) not in folded:
                raise UserError(f"{where}: weight given for {word!r}, which is not in `words`")
            pairs.append((word, _nonnegative(weight, f"{where}: weight of {word!r}")))
        values["weights"] = tuple(pairs)
    if kind is RuleKind.POSITION:
        positions = table["positions"]
        if not isinstance(positions, list) or not positions or not all(
                isinstance(item, int) and not isinstance(item, bool) for item in positions):
            raise UserError(f"{where}: `positions` must be a non-empty list of integers")
        values["positions"] = tuple(positions)
        if "weights" in table:
            weights = table["weights"]
            if not isinstance(weights, list) or len(weights) != len(positions):
                raise UserError(f"{where}: `weights` must be a list as long as `positions`")
            values["position_weights"] = tuple(_nonnegative(weight, f"{where}: `weights`") for weight in weights)
    if kind is RuleKind.INSIDE:
        for key in ("open", "close"):
            if not isinstance(table[key], str) or not table[key]:
                raise UserError(f"{where}: `{key}` must be a non-empty string")
            values[key] = table[key]
    return Rule(**values)


def _parse_checker(table: Any, where: str) -> Checker:
    if not isinstance(table, Mapping):
        raise UserError(f"{where} must be a table such as {{ keywords = [\"digit\"] }}")
    _check_keys(table, _CHECKER_KEYS, where)
    keywords = _strings(table.get("keywords", []), f"{where}: `keywords`", allow_empty=True)
    regex_value = table.get("regex", [])
    patterns = (regex_value,) if isinstance(regex_value, str) else _strings(regex_value, f"{where}: `regex`",
                                                                           allow_empty=True)
    for pattern in patterns:
        _regex(pattern, f"{where}: `regex`")
    members = _strings(table.get("members", []), f"{where}: `members`", allow_empty=True)
    min_members = _integer(table.get("min_members", min(2, len(members)) or 1), f"{where}: `min_members`")
    if members and not 1 <= min_members <= len(members):
        raise UserError(f"{where}: `min_members` must be between 1 and the number of members ({len(members)})")
    if not (keywords or patterns or members):
        raise UserError(f"{where}: give at least one of keywords, regex, members")
    return Checker(keywords=keywords, regex=tuple(patterns), members=members, min_members=min_members)


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: "
                        f"{', '.join(sorted(allowed))}")


def _regex(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise UserError(f"{where} must be a non-empty regular expression string")
    try:
        re.compile(value)
    except re.error as exc:
        raise UserError(f"{where} is not a valid regular expression: {exc}") from None
    return value


def _strings(value: Any, where: str, *, allow_empty: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise UserError(f"{where} must be a list of non-empty strings")
    if not value and not allow_empty:
        raise UserError(f"{where} must not be empty")
    return tuple(value)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where} must be a finite number (got {value!r})")
    return float(value)


def _nonnegative(value: Any, where: str) -> float:
    number = _number(value, where)
    if number < 0:
        raise UserError(f"{where} must not be negative (got {number})")
    return number


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{where} must be an integer (got {value!r})")
    return value


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{where} must be true or false (got {value!r})")
    return value
