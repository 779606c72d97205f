"""The run configuration: one typed, nested model that is the TOML file, the `run` flags and the stored run config.

A TOML file has one table per stage (`[run]`, `[record]`, `[split]`, `[explain]`, `[simulate]`, `[score]`, `[llm]`,
`[budget]`); every key is also a flag, named after the key (`[record] top_k` is `--top-k`) unless the key says
otherwise (`[split] seed` is `--split-seed`). Adding a setting is one annotated line plus its docstring in the right
section: the TOML key, the flag (with that docstring as its help) and the stored config follow. Wrong types and
unknown keys are one-line errors naming the key (its dotted path) and where it came from (the file, or the flag).

Flat keys (the flag names, as in configs written before the sections existed: `seed = 3`, `llm = "..."`) are
still read: from a file with a one-line deprecation note, from Python (`RunConfig(seed=3)`) and from stored run
configs of old databases silently.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from neuron_explainer.core.database_url import DEFAULT_DATABASE_URL
from neuron_explainer.core.errors import UserError
from neuron_explainer.explain.ngrams import NgramMode
from neuron_explainer.explain.splits import SplitConfig, SplitGroups

logger = logging.getLogger(__name__)

SPLIT_DEFAULTS = SplitConfig()
"""The split sizes every command defaults to (the one place they are set is `SplitConfig`)."""


def _flag(name: str) -> Any:
    """Field metadata: this key's flag (and flat key) is `--name` rather than the key's own name."""
    return Field(json_schema_extra={"flag": name})


def _positive(value: Any) -> Any:
    if value <= 0:
        raise ValueError("must be positive")
    return value


def _not_negative(value: Any) -> Any:
    if value is not None and value < 0:
        raise ValueError("must not be negative")
    return value


def _names(value: Any) -> Any:
    """A comma-separated string (flag) or a list (TOML, stored config) of names."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list):
        return tuple(value)
    return value


class Section(BaseModel):
    """One table of the TOML file: strict types, no unknown keys, immutable."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, use_attribute_docstrings=True)


class RunSettings(Section):
    """[run]: where results go and how the night is driven."""

    db: str = DEFAULT_DATABASE_URL
    """SQLAlchemy URL of the results database, or a SQLite file path."""
    concurrency: int = 8
    """Neurons processed at once."""
    limit: int | None = None
    """Process at most this many neurons this run."""
    retry_failed: bool = False
    """Also retry units whose failure was permanent (unusable answer, nothing to explain); transient ones
    (connection, timeout, 429/5xx after retries) are retried by every run."""
    max_consecutive_failures: int = 10
    """Stop the night (exit code 3) after this many units in a row failed for the backend's sake; 0: never."""
    lease_seconds: float = 300.0
    """PostgreSQL: how long a worker's claim on a neuron lives without renewal (a dead worker's neurons wait this
    long for another worker, less on the same host)."""

    ray: str | None = None
    """Run the units on a Ray cluster: `auto` (the local one, started if none runs; the flag alone means auto),
    HOST:PORT or ray://HOST:PORT. Needs `pip install 'neuron-explainer[ray]'`."""
    ray_workers: int | None = None
    """Ray worker actors, each with `concurrency` neurons in flight (default: one per CPU of the cluster)."""

    _not_negative = field_validator("limit", "max_consecutive_failures", "ray_workers")(_not_negative)
    _positive = field_validator("concurrency", "lease_seconds")(_positive)


class RecordSettings(Section):
    """[record]: the subject model, the corpus and the recording of activations (or a store to reuse)."""

    model: str = "default"
    """Subject model: `default`, an HF id, a local directory or a .gguf file."""
    corpus: str = "python-docs"
    """Corpus spec for recording."""
    layers: str = "all"
    """Layers to record (SPEC)."""
    records: str | None = None
    """Reuse this record store instead of recording (its manifest decides model, corpus, layers)."""
    records_root: str = "records"
    """Where new recordings are written (one subdirectory per recording configuration)."""
    ctx: int = 64
    """Tokens per window."""
    windows: int = 2000
    """Windows to record."""
    top_k: int = 40
    """Top windows kept per neuron."""
    random: int = 100
    """Shared random windows kept (each neuron draws its own random score and calibration windows from them)."""
    seed: int = 0
    """Seed of the recording and of the neuron sample (and of the split, unless split_seed is set)."""
    dtype: str = "auto"
    """Subject model dtype."""
    device: str = "auto"
    """Subject model device."""
    polarity: str = "auto"
    """`positive`, `both` (also record and explain the most negative windows) or `auto` (both on gated MLPs, where
    about half the neurons are negative-dominant; positive elsewhere)."""

    _positive = field_validator("ctx", "windows")(_positive)

    @field_validator("polarity")
    @classmethod
    def _polarity(cls, value: str) -> str:
        if value == "any":
            raise ValueError("any only picks results (query, export); a run explains positive, both or auto")
        if value not in ("positive", "both", "auto"):
            raise ValueError("must be positive, both or auto")
        return value


class SplitSettings(Section):
    """[split]: how each neuron's windows are split into explain / calibrate / score parts."""

    seed: Annotated[int | None, _flag("split_seed")] = None
    """Seed of the explain/calibrate/score split (default: the record seed); changing it re-splits without
    re-recording."""
    explain_windows: int = SPLIT_DEFAULTS.explain_top
    """Top windows shown to the explainer."""
    score_top_windows: int = SPLIT_DEFAULTS.score_top
    """Held-out top windows scored."""
    score_random_windows: int = SPLIT_DEFAULTS.score_random
    """Random windows scored."""
    groups: Annotated[str, _flag("split_groups")] = "auto"
    """What a split keeps on one side: auto (documents, or adjacent windows in stores without document ids) or
    documents (refuses a store without document ids)."""

    _positive = field_validator("explain_windows")(_positive)

    @field_validator("groups")
    @classmethod
    def _groups(cls, value: str) -> str:
        if value not in ("auto", "documents"):
            raise ValueError("must be auto or documents")
        return value


class ExplainSettings(Section):
    """[explain]: which neurons, and which explainers explain them."""

    neurons: str = "all"
    """Neurons to explain (SPEC), within the recorded layers."""
    sample: int | None = None
    """Explain a seeded random sample of this many neurons from the selection."""
    explainers: tuple[str, ...] = ("token-pairs",)
    """Explainers to run: token-pairs, sasc, lexicon (LLM-free weighted tokens and classes), ngram (or any
    registered one)."""
    ngram_mode: Annotated[NgramMode, Field(strict=False)] = NgramMode.IN_CONTEXT
    """Where sasc/ngram read n-gram responses: in-context (free after recording) or isolated (one cached sweep of
    the subject model per layer, as in SASC)."""
    candidates: int = 1
    """Explanations drawn per neuron (best-of-n on the calibrate split)."""
    with_weights: Annotated[bool, _flag("explain_with_weights")] = False
    """Show token-pairs the neuron's weight views too (output and input tokens; `neuron-explainer weights` first)."""

    _names = field_validator("explainers", mode="before")(_names)
    _not_negative = field_validator("sample")(_not_negative)
    _positive = field_validator("candidates")(_positive)


class SimulateSettings(Section):
    """[simulate]: the simulator that predicts activations from an explanation."""

    simulator: str | None = None
    """Simulator: all-at-once, generated, lexical, embedding; default = best the backend allows."""


class ScoreSettings(Section):
    """[score]: how explanations are scored."""

    scorers: tuple[str, ...] = ("simulation",)
    """Scorers: simulation (the simulator above), detection, fuzzing (chat model of --simulator-llm or --llm)."""
    baselines: bool = False
    """Also score the shuffled and empty baselines."""
    rescore: bool = False
    """Score again even where a score for the same configuration exists."""
    causal: bool = False
    """Also compute the causal score (subject run with simulated vs mean activations) of every score lacking one."""

    _names = field_validator("scorers", mode="before")(_names)


class LLMSettings(Section):
    """[llm]: the LLM backends and how hard they may be driven."""

    backend: Annotated[str, _flag("llm")] = "local:default"
    """Backend for explaining."""
    simulator_backend: Annotated[str | None, _flag("simulator_llm")] = None
    """Backend for simulating (default: the same as `llm`)."""
    rpm: int | None = None
    """Requests-per-minute limit for API backends."""
    tpm: int | None = None
    """Tokens-per-minute limit for API backends."""
    batch: bool = False
    """Send API requests through the OpenAI Batch API (half price, answers within a day; resumable)."""


class BudgetSettings(Section):
    """[budget]: when the night stops."""

    max_cost: float | None = None
    """Stop when the estimated spend (USD) reaches this."""
    max_tokens: int | None = None
    """Stop when prompt + completion tokens reach this."""
    deadline: str | None = None
    """Stop at this local wall-clock time (HH:MM), the next one to come."""
    max_minutes: float | None = None
    """Stop after this many minutes."""

    _not_negative = field_validator("max_cost", "max_tokens", "max_minutes")(_not_negative)

    @field_validator("deadline")
    @classmethod
    def _deadline(cls, value: str | None) -> str | None:
        if value is not None:
            parse_deadline(value, now=dt.datetime.now())
        return value


class RunConfig(BaseModel):
    """Everything a nightly run needs, one section per stage; `config.record.seed` is `[record] seed` in TOML."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, use_attribute_docstrings=True)

    run: RunSettings = RunSettings()
    """Database and driving of the run."""
    record: RecordSettings = RecordSettings()
    """Subject model, corpus and recording."""
    split: SplitSettings = SplitSettings()
    """Explain/calibrate/score split."""
    explain: ExplainSettings = ExplainSettings()
    """Neuron selection and explainers."""
    simulate: SimulateSettings = SimulateSettings()
    """Simulator."""
    score: ScoreSettings = ScoreSettings()
    """Scorers."""
    llm: LLMSettings = LLMSettings()
    """LLM backends and rate limits."""
    budget: BudgetSettings = BudgetSettings()
    """Spend and time limits."""

    def __init__(self, **values: Any) -> None:
        nested, spelled = nest(values)
        try:
            super().__init__(**nested)
        except ValidationError as exc:
            raise ConfigError(exc.errors(include_url=False)[0], spelled=spelled) from None

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_keys(cls, values: Any) -> Any:
        """Stored configs of old databases (and `model_validate` input) may be flat."""
        return nest(values)[0] if isinstance(values, dict) else values

    @property
    def split_config(self) -> SplitConfig:
        """The explain/calibrate/score split the run uses."""
        split = self.split
        return SplitConfig(seed=self.record.seed if split.seed is None else split.seed,
                           explain_top=split.explain_windows, score_top=split.score_top_windows,
                           score_random=split.score_random_windows, groups=SplitGroups(split.groups))

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable nested form (stored with the run; `RunConfig.model_validate` reads it back)."""
        return self.model_dump(mode="json")


SECTIONS: dict[str, type[Section]] = {name: field.annotation for name, field in RunConfig.model_fields.items()}
"""The TOML tables, in order, and their models."""


@dataclass(frozen=True)
class ConfigFlag:
    """One setting as a flag: its flat name and where it lives in the nested model."""

    name: str
    """Flat name, underscores (`top_k`); the flag is `--top-k`."""
    section: str
    """The TOML table (`record`)."""
    key: str
    """The key within the table (`top_k`)."""
    field: FieldInfo
    """The pydantic field (annotation, default, docstring)."""

    @property
    def path(self) -> str:
        """Dotted path, as errors name it (`record.top_k`)."""
        return f"{self.section}.{self.key}"

    @property
    def option(self) -> str:
        """The command-line flag (`--top-k`)."""
        return "--" + self.name.replace("_", "-")


@functools.cache
def config_flags() -> dict[str, ConfigFlag]:
    """Every setting by flat name (= flag name = the key of old flat configs), in declaration order."""
    flags: dict[str, ConfigFlag] = {}
    for section, model in SECTIONS.items():
        for key, field in model.model_fields.items():
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            name = str(extra.get("flag", key))
            if name in flags:
                raise RuntimeError(f"config keys {flags[name].path} and {section}.{key} share the flag --{name}")
            flags[name] = ConfigFlag(name=name, section=section, key=key, field=field)
    return flags


def _is_flat(key: str, value: Any) -> bool:
    # `llm` is both a table ([llm]) and the flat key of the explaining backend (`llm = "openai:..."`).
    return key in config_flags() and (key not in SECTIONS or isinstance(value, str))


def nest(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Flat keys (flag names) moved into their sections; also returns {dotted path: flat key as written}.
    Dashes in key names read as underscores. Unknown keys are left where they are for the model to refuse."""
    nested: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    flat: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        if _is_flat(key, value):
            flat[key] = value
        elif key in SECTIONS and isinstance(value, dict):
            nested[key] = {item.replace("-", "_"): inner for item, inner in value.items()}
        else:
            nested[key] = value
    for name, value in flat.items():
        flag = config_flags()[name]
        section = nested.get(flag.section, {})
        if isinstance(section, BaseModel):
            section = section.model_dump()
        if isinstance(section, dict):
            nested[flag.section] = {**section, flag.key: value}
            spelled[flag.path] = name
        else:
            nested[name] = value
    return nested, spelled


class ConfigError(UserError):
    """A setting the model refuses; the message names the key, and where it came from once that is known."""

    def __init__(self, error: Any, *, spelled: dict[str, str] | None = None, source: str | None = None,
                 from_flags: bool = False) -> None:
        self.error = error
        self.spelled = spelled or {}
        path = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        got = f" (got {error['input']!r})"
        written = self.spelled.get(path)
        flag = config_flags().get(written or "") or next(
            (flag for flag in config_flags().values() if flag.path == path), None)
        if error["type"] == "extra_forbidden":
            text = f"unknown config key {path!r}" + (f" in {source}" if source else "")
        elif not path:
            text = message + (f" in {source}" if source else "")
        elif from_flags and flag is not None:
            text = f"{flag.option} {message}{got}"
        else:
            name = f"{written!r} ({path}, {flag.option})" if written and flag else repr(path)
            text = f"bad value for config key {name}" + (f" in {source}" if source else "") + f": {message}{got}"
        super().__init__(text)


def parse_deadline(text: str, *, now: dt.datetime) -> dt.datetime:
    """`HH:MM` -> the next such local time after `now`."""
    try:
        hour_text, minute_text = text.split(":")
        target = now.replace(hour=int(hour_text), minute=int(minute_text), second=0, microsecond=0)
    except ValueError:
        raise UserError(f"malformed --deadline {text!r}: expected HH:MM such as 06:30") from None
    return target if target > now else target + dt.timedelta(days=1)


def read_toml(path: str) -> dict[str, Any]:
    """The tables and keys of a TOML config file, as written."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"--config {path} is a directory, not a TOML file") from None
    except OSError as exc:
        raise UserError(f"cannot read --config {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"malformed TOML in {path}: {exc}") from None


def load_config(path: str | None, overrides: dict[str, Any]) -> RunConfig:
    """Merge a TOML file (optional) with flag overrides (flat names; None means not given) into a RunConfig."""
    values: dict[str, Any] = {}
    if path is not None:
        values, spelled = nest(read_toml(path))
        try:
            RunConfig(**values)
        except ConfigError as exc:
            raise ConfigError(exc.error, spelled=spelled, source=path) from None
        if spelled:
            logger.warning("%s: flat keys are deprecated, write them in their tables: %s", path,
                           ", ".join(f"{name} -> [{flag.section}] {flag.key}" for name, flag in
                                     ((name, config_flags()[name]) for name in spelled.values())))
    given = {name: value for name, value in overrides.items() if value is not None}
    flag_values, _ = nest(given)
    for section, settings in flag_values.items():
        values[section] = {**values.get(section, {}), **settings} if isinstance(settings, dict) else settings
    try:
        return RunConfig(**values)
    except ConfigError as exc:
        raise ConfigError(exc.error, from_flags=True) from None
