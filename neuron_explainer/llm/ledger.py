"""The usage ledger: one entry per LLM call with token counts, latency and estimated cost.

The pipeline drains entries (`UsageLedger.drain()`) or subscribes (`on_entry`) to persist them; the ledger
itself keeps everything in memory for per-run totals. Entries never hold keys, headers or prompt text.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from neuron_explainer.core.errors import UserError
from neuron_explainer.core.paths import DATA_DIR

logger = logging.getLogger(__name__)

PRICES_ENV = "NEURON_EXPLAINER_PRICES"
"""Environment variable naming a price table that replaces data/prices.toml."""
DEFAULT_PRICES_PATH = DATA_DIR / "prices.toml"

_SCOPE: ContextVar[tuple[str, str]] = ContextVar("neuron_explainer_usage_scope", default=("", ""))


@contextlib.contextmanager
def usage_scope(stage: str, unit: str) -> Iterator[None]:
    """Label the calls made inside (this task and the tasks it starts) with what they were for, e.g.
    `explain:token-pairs` and the neuron `3:17`, so the ledger can say what a neuron costs per stage."""
    token = _SCOPE.set((stage, unit))
    try:
        yield
    finally:
        _SCOPE.reset(token)


@dataclass(frozen=True)
class ModelPrice:
    """What one model costs, in USD per million tokens."""

    input: float
    """Uncached prompt tokens."""
    output: float
    """Completion tokens."""
    cached_input: float
    """Prompt tokens served from the provider's prompt cache."""

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> float:
        """Estimated USD for one call."""
        uncached = max(prompt_tokens - cached_tokens, 0)
        return (uncached * self.input + cached_tokens * self.cached_input + completion_tokens * self.output) / 1e6


class PriceTable:
    """Model prices read from a TOML file (see data/prices.toml for the format)."""

    def __init__(self, prices: Mapping[str, ModelPrice], *, source: str = "",
                 batch_discount: float | None = None) -> None:
        self.prices = dict(prices)
        """Model name -> price."""
        self.source = source
        """Where the table came from."""
        self.batch_discount = batch_discount
        """Batch API price as a fraction of the standard price (None: the table does not say)."""

    @classmethod
    def load(cls, path: Path | str | None = None) -> PriceTable:
        """Read `path`, else $NEURON_EXPLAINER_PRICES, else the bundled data/prices.toml."""
        import tomllib

        chosen = Path(path or os.environ.get(PRICES_ENV) or DEFAULT_PRICES_PATH)
        try:
            document = tomllib.loads(chosen.read_text(encoding="utf-8"))
        except OSError as exc:
            raise UserError(f"cannot read price table {chosen}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"price table {chosen} is not valid TOML: {exc}") from None
        prices = {}
        for model, entry in (document.get("models") or {}).items():
            try:
                input_price = float(entry["input"])
                prices[model] = ModelPrice(input=input_price, output=float(entry["output"]),
                                           cached_input=float(entry.get("cached_input", input_price)))
            except (KeyError, TypeError, ValueError):
                raise UserError(f"price table {chosen}: model {model!r} needs numeric `input` and `output`") from None
        discount = document.get("batch_discount")
        if discount is not None and not (isinstance(discount, (int, float)) and 0 < discount <= 1):
            raise UserError(f"price table {chosen}: batch_discount must be a number in (0, 1]")
        return cls(prices, source=str(chosen), batch_discount=None if discount is None else float(discount))

    def price(self, model: str) -> ModelPrice | None:
        """The price of `model`, or of its longest listed prefix followed by `-` (dated snapshots)."""
        if model in self.prices:
            return self.prices[model]
        matches = [name for name in self.prices if model.startswith(name + "-")]
        return self.prices[max(matches, key=len)] if matches else None


@dataclass(frozen=True)
class LedgerEntry:
    """One LLM call (or one cache hit standing in for it)."""

    backend: str
    """Backend spec as given, without secrets (e.g. `openai:gpt-4o-mini`)."""
    model: str
    """Model name."""
    operation: str
    """`chat`, `completion`, `slots` (prompt-logprob read) or `generate` / `slots` for local backends."""
    prompt_tokens: int
    """Prompt tokens billed (0 for cache hits)."""
    completion_tokens: int
    """Completion tokens billed (0 for cache hits)."""
    cached_tokens: int
    """Prompt tokens the provider served from its own prompt cache."""
    latency_s: float
    """Wall-clock seconds of the call, retries and waits included."""
    cost_usd: float | None
    """Estimated cost; None when the model has no price in the table."""
    from_cache: bool
    """True when the response cache answered and no request was made."""
    attempts: int
    """HTTP attempts made (0 for cache hits and in-process calls)."""
    created_at: float
    """Unix time the call finished."""
    stage: str = ""
    """What the call was for (`explain:token-pairs`, `simulate:generated`, `score:detection`); empty outside a
    `usage_scope`."""
    unit: str = ""
    """The unit of work (a neuron `layer:index`) it was made for; empty outside a `usage_scope`."""


@dataclass(frozen=True)
class UsageTotals:
    """Sums over ledger entries."""

    calls: int = 0
    """Entries counted."""
    cache_hits: int = 0
    """Entries answered by the response cache."""
    prompt_tokens: int = 0
    """Prompt tokens."""
    completion_tokens: int = 0
    """Completion tokens."""
    cached_tokens: int = 0
    """Provider-cached prompt tokens."""
    cost_usd: float = 0.0
    """Estimated cost of the priced entries."""
    unpriced_calls: int = 0
    """Calls (not cache hits) whose model has no price, so `cost_usd` understates the total."""
    latency_s: float = 0.0
    """Summed latency."""

    def add(self, entry: LedgerEntry) -> UsageTotals:
        """These totals plus one entry."""
        return UsageTotals(
            calls=self.calls + 1, cache_hits=self.cache_hits + int(entry.from_cache),
            prompt_tokens=self.prompt_tokens + entry.prompt_tokens,
            completion_tokens=self.completion_tokens + entry.completion_tokens,
            cached_tokens=self.cached_tokens + entry.cached_tokens,
            cost_usd=self.cost_usd + (entry.cost_usd or 0.0),
            unpriced_calls=self.unpriced_calls + int(entry.cost_usd is None and not entry.from_cache),
            latency_s=self.latency_s + entry.latency_s)


class UsageLedger:
    """Collects LedgerEntry rows for one run; thread-safe."""

    def __init__(self, *, prices: PriceTable | None = None,
                 on_entry: Callable[[LedgerEntry], None] | None = None) -> None:
        self._prices = prices
        self._on_entry = on_entry
        self._entries: list[LedgerEntry] = []
        self._drained = 0
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    @property
    def prices(self) -> PriceTable:
        """The price table (loaded on first use)."""
        if self._prices is None:
            self._prices = PriceTable.load()
        return self._prices

    def record(self, *, backend: str, model: str, operation: str, prompt_tokens: int = 0, completion_tokens: int = 0,
               cached_tokens: int = 0, latency_s: float = 0.0, from_cache: bool = False, attempts: int = 0,
               free: bool = False, price_factor: float = 1.0) -> LedgerEntry:
        """Add one call; `free=True` for in-process models (cost 0 regardless of the price table);
        `price_factor` scales the table's price (the Batch API's discount)."""
        cost: float | None
        if from_cache or free:
            cost = 0.0
        else:
            price = self.prices.price(model)
            cost = price.cost(prompt_tokens, completion_tokens, cached_tokens) * price_factor if price else None
            if price is None and model not in self._warned:
                self._warned.add(model)
                logger.warning("no price for model %r in %s; its cost is reported as unknown", model,
                               self.prices.source)
        stage, unit = _SCOPE.get()
        entry = LedgerEntry(backend=backend, model=model, operation=operation, prompt_tokens=prompt_tokens,
                            completion_tokens=completion_tokens, cached_tokens=cached_tokens, latency_s=latency_s,
                            cost_usd=cost, from_cache=from_cache, attempts=attempts, created_at=time.time(),
                            stage=stage, unit=unit)
        with self._lock:
            self._entries.append(entry)
        if self._on_entry is not None:
            self._on_entry(entry)
        return entry

    def extend(self, entries: list[LedgerEntry]) -> None:
        """Add calls recorded by another process's ledger (a Ray worker's)."""
        with self._lock:
            self._entries.extend(entries)

    @property
    def entries(self) -> list[LedgerEntry]:
        """Every entry recorded so far."""
        with self._lock:
            return list(self._entries)

    def drain(self) -> list[LedgerEntry]:
        """Entries recorded since the last drain (for the database stage to persist)."""
        with self._lock:
            fresh = self._entries[self._drained:]
            self._drained = len(self._entries)
        return fresh

    def totals(self) -> UsageTotals:
        """Totals over every entry of this run."""
        totals = UsageTotals()
        for entry in self.entries:
            totals = totals.add(entry)
        return totals

    def totals_by_model(self) -> dict[tuple[str, str], UsageTotals]:
        """Totals per (backend, model)."""
        grouped: dict[tuple[str, str], UsageTotals] = {}
        for entry in self.entries:
            key = (entry.backend, entry.model)
            grouped[key] = grouped.get(key, UsageTotals()).add(entry)
        return grouped
