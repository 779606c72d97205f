"""The run configuration: one typed model that is the TOML file, the `run` flags and the config stored with a run.

Adding a setting is one annotated line plus its docstring below: the TOML key, the `--flag` (with that docstring as
its help) and the stored config follow. Wrong types and unknown keys are one-line errors naming the key and where
it came from (the file, or the flag).
"""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from neuron_explainer.core.database_url import DEFAULT_DATABASE_URL
from neuron_explainer.core.errors import UserError
from neuron_explainer.explain.ngrams import NgramMode
from neuron_explainer.explain.splits import SplitConfig, SplitGroups

SPLIT_DEFAULTS = SplitConfig()
"""The split sizes every command defaults to (the one place they are set is `SplitConfig`)."""


class RunConfig(BaseModel):
    """Everything a nightly run needs; TOML keys and `--flags` use these names (underscores or dashes)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, use_attribute_docstrings=True)

    db: str = DEFAULT_DATABASE_URL
    """SQLAlchemy URL of the results database, or a SQLite file path."""
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
    split_seed: int | None = None
    """Seed of the explain/calibrate/score split (default: seed); changing it re-splits without re-recording."""
    dtype: str = "auto"
    """Subject model dtype."""
    device: str = "auto"
    """Subject model device."""
    polarity: str = "auto"
    """`positive`, `both` (also record and explain the most negative windows) or `auto` (both on gated MLPs, where
    about half the neurons are negative-dominant; positive elsewhere)."""
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
    simulator: str | None = None
    """Simulator: all-at-once, generated, lexical, embedding; default = best the backend allows."""
    scorers: tuple[str, ...] = ("simulation",)
    """Scorers: simulation (the simulator above), detection, fuzzing (chat model of --simulator-llm or --llm)."""
    llm: str = "local:default"
    """Backend for explaining."""
    simulator_llm: str | None = None
    """Backend for simulating (default: the same as `llm`)."""
    candidates: int = 1
    """Explanations drawn per neuron (best-of-n on the calibrate split)."""
    explain_with_weights: bool = False
    """Show token-pairs the neuron's weight views too (output and input tokens; `neuron-explainer weights` first)."""
    explain_windows: int = SPLIT_DEFAULTS.explain_top
    """Top windows shown to the explainer."""
    score_top_windows: int = SPLIT_DEFAULTS.score_top
    """Held-out top windows scored."""
    score_random_windows: int = SPLIT_DEFAULTS.score_random
    """Random windows scored."""
    split_groups: str = "auto"
    """What a split keeps on one side: auto (documents, or adjacent windows in stores without document ids) or
    documents (refuses a store without document ids)."""
    baselines: bool = False
    """Also score the shuffled and empty baselines."""
    concurrency: int = 8
    """Neurons processed at once."""
    batch: bool = False
    """Send API requests through the OpenAI Batch API (half price, answers within a day; resumable)."""
    rpm: int | None = None
    """Requests-per-minute limit for API backends."""
    tpm: int | None = None
    """Tokens-per-minute limit for API backends."""
    max_cost: float | None = None
    """Stop when the estimated spend (USD) reaches this."""
    max_tokens: int | None = None
    """Stop when prompt + completion tokens reach this."""
    deadline: str | None = None
    """Stop at this local wall-clock time (HH:MM), the next one to come."""
    max_minutes: float | None = None
    """Stop after this many minutes."""
    limit: int | None = None
    """Process at most this many neurons this run."""
    retry_failed: bool = False
    """Also retry units whose failure was permanent (unusable answer, nothing to explain); transient ones
    (connection, timeout, 429/5xx after retries) are retried by every run."""
    max_consecutive_failures: int = 10
    """Stop the night (exit code 3) after this many units in a row failed for the backend's sake; 0: never."""
    rescore: bool = False
    """Score again even where a score for the same configuration exists."""
    causal: bool = False
    """Also compute the causal score (subject run with simulated vs mean activations) of every score lacking one."""
    lease_seconds: float = 300.0
    """PostgreSQL: how long a worker's claim on a neuron lives without renewal (a dead worker's neurons wait this
    long for another worker, less on the same host)."""
    ray: str | None = None
    """Run the units on a Ray cluster: `auto` (the local one, started if none runs; the flag alone means auto),
    HOST:PORT or ray://HOST:PORT. Needs `pip install 'neuron-explainer[ray]'`."""
    ray_workers: int | None = None
    """Ray worker actors, each with `concurrency` neurons in flight (default: one per CPU of the cluster)."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(exc.errors(include_url=False)[0]) from None

    @field_validator("explainers", "scorers", mode="before")
    @classmethod
    def _explainer_list(cls, value: Any) -> Any:
        """A comma-separated string (flag) or a list (TOML, stored config) of names."""
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list):
            return tuple(value)
        return value

    @model_validator(mode="after")
    def _check_ranges(self) -> RunConfig:
        for name in ("max_cost", "max_tokens", "max_minutes", "limit", "sample", "max_consecutive_failures",
                     "ray_workers"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative (got {value})")
        for name in ("ctx", "windows", "concurrency", "candidates", "explain_windows", "lease_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive (got {getattr(self, name)})")
        if self.polarity == "any":
            raise ValueError("--polarity any only picks results (query, export); a run explains positive, both or "
                             "auto")
        if self.polarity not in ("positive", "both", "auto"):
            raise ValueError(f"--polarity must be positive, both or auto (got {self.polarity!r})")
        if self.split_groups not in ("auto", "documents"):
            raise ValueError(f"--split-groups must be auto or documents (got {self.split_groups!r})")
        if self.deadline is not None:
            parse_deadline(self.deadline, now=dt.datetime.now())
        return self

    @property
    def split(self) -> SplitConfig:
        """The explain/calibrate/score split the run uses."""
        return SplitConfig(seed=self.seed if self.split_seed is None else self.split_seed,
                           explain_top=self.explain_windows, score_top=self.score_top_windows,
                           score_random=self.score_random_windows, groups=SplitGroups(self.split_groups))

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored with the run; `RunConfig.model_validate` reads it back)."""
        return self.model_dump(mode="json")


class ConfigError(UserError):
    """A setting the model refuses; the message names the key, and where it came from once that is known."""

    def __init__(self, error: Any, *, source: str | None = None) -> None:
        self.error = error
        key = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        where = f" in {source}" if source else ""
        if error["type"] == "extra_forbidden":
            text = f"unknown config key {key!r}{where}"
        elif not key:
            text = f"{message}{where}"
        else:
            text = f"bad value for config key {key!r}{where}: {message} (got {error['input']!r})"
        super().__init__(text)


def parse_deadline(text: str, *, now: dt.datetime) -> dt.datetime:
    """`HH:MM` -> the next such local time after `now`."""
    try:
        hour_text, minute_text = text.split(":")
        target = now.replace(hour=int(hour_text), minute=int(minute_text), second=0, microsecond=0)
    except ValueError:
        raise UserError(f"malformed --deadline {text!r}: expected HH:MM such as 06:30") from None
    return target if target > now else target + dt.timedelta(days=1)


def config_field_names() -> list[str]:
    """Names of the settable keys, in declaration order."""
    return list(RunConfig.model_fields)


def read_toml(path: str) -> dict[str, Any]:
    """The keys of a TOML config file (dashes in key names read as underscores)."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"--config {path} is a directory, not a TOML file") from None
    except OSError as exc:
        raise UserError(f"cannot read --config {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"malformed TOML in {path}: {exc}") from None
    return {key.replace("-", "_"): value for key, value in raw.items()}


def load_config(path: str | None, overrides: dict[str, Any]) -> RunConfig:
    """Merge a TOML file (optional) with flag overrides (None means not given) into a RunConfig."""
    values = read_toml(path) if path is not None else {}
    if values:
        try:
            RunConfig(**values)
        except ConfigError as exc:
            raise ConfigError(exc.error, source=path) from None
    values.update({key: value for key, value in overrides.items() if value is not None})
    return RunConfig(**values)
