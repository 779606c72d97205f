"""The run configuration: one frozen dataclass, loadable from TOML, every key also a command-line flag."""

from __future__ import annotations

import dataclasses
import datetime as dt
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from neuron_explainer.core.errors import UserError


@dataclass(frozen=True)
class RunConfig:
    """Everything a nightly run needs; TOML keys and `--flags` use these names (underscores or dashes)."""

    db: str = "sqlite:///neurons.db"
    """SQLAlchemy URL of the results database."""
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
    random: int = 40
    """Shared random windows kept."""
    seed: int = 0
    """Seed for recording, splits and sampling."""
    dtype: str = "auto"
    """Subject model dtype."""
    device: str = "auto"
    """Subject model device."""
    polarity: str = "positive"
    """`positive` or `both` (also record and explain the most negative windows)."""
    neurons: str = "all"
    """Neurons to explain (SPEC), within the recorded layers."""
    sample: int | None = None
    """Explain a seeded random sample of this many neurons from the selection."""
    explainers: tuple[str, ...] = ("token-pairs",)
    """Explainers to run: token-pairs, sasc, ngram."""
    simulator: str | None = None
    """Simulator: all-at-once, generated, lexical, embedding; default = best the backend allows."""
    llm: str = "local:default"
    """Backend for explaining."""
    simulator_llm: str | None = None
    """Backend for simulating (default: the same as `llm`)."""
    candidates: int = 1
    """Explanations drawn per neuron (best-of-n on the calibrate split)."""
    explain_windows: int = 10
    """Top windows shown to the explainer."""
    score_top_windows: int = 10
    """Held-out top windows scored."""
    score_random_windows: int = 10
    """Random windows scored."""
    baselines: bool = False
    """Also score the shuffled and empty baselines."""
    concurrency: int = 8
    """Neurons processed at once."""
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
    """Retry units of work that failed before."""
    rescore: bool = False
    """Score again even where a score for the same configuration exists."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Reserved for stage-specific settings (kept in the run's stored config)."""

    def __post_init__(self) -> None:
        for name in ("max_cost", "max_tokens", "max_minutes", "limit", "sample"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"--{name.replace('_', '-')} must not be negative (got {value})")
        for name in ("ctx", "windows", "concurrency", "candidates", "explain_windows"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive (got {getattr(self, name)})")
        if self.polarity not in ("positive", "both"):
            raise UserError(f"--polarity must be positive or both (got {self.polarity!r})")
        if self.deadline is not None:
            parse_deadline(self.deadline, now=dt.datetime.now())

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored with the run)."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}


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
    return [item.name for item in fields(RunConfig) if item.name != "extra"]


def load_config(path: str | None, overrides: dict[str, Any]) -> RunConfig:
    """Merge a TOML file (optional) with flag overrides (None means not given) into a RunConfig."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"config file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"malformed TOML in {path}: {exc}") from None
        known = set(config_field_names())
        for key, value in raw.items():
            name = key.replace("-", "_")
            if name not in known:
                raise UserError(f"unknown config key {key!r} in {path}")
            values[name] = value
    values.update({key: value for key, value in overrides.items() if value is not None})
    if isinstance(values.get("explainers"), str):
        values["explainers"] = tuple(part.strip() for part in values["explainers"].split(",") if part.strip())
    elif "explainers" in values:
        values["explainers"] = tuple(values["explainers"])
    try:
        return RunConfig(**values)
    except TypeError as exc:
        raise UserError(f"bad config value: {exc}") from None
