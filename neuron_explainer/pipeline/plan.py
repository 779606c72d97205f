"""`run --plan`: what a run would ask of its LLMs (requests, tokens, dollars, hours) before it spends anything.

Per-neuron figures come from the ledger of earlier runs in the same database (calls labelled with their stage and
neuron, cache hits left out) where there are any for the stage and model, else from the prompt templates themselves
(built around synthetic windows of the configured length and sized like the explainer sizes its prompts). The plan
covers the whole selection, finished neurons included: an upper bound for a resumed night.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from neuron_explainer.core.errors import UserError
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.explain.token_pairs import build_prompt, estimate_tokens, scale_windows
from neuron_explainer.explain.types import ExplainerKind, Polarity
from neuron_explainer.activations.records import Window
from neuron_explainer.llm.base import Message
from neuron_explainer.llm.factory import BackendKind, parse_backend_spec
from neuron_explainer.llm.ledger import PriceTable
from neuron_explainer.pipeline.classifiers import scorer_kinds
from neuron_explainer.pipeline.config import RunConfig
from neuron_explainer.scoring_llm import ScorerKind
from neuron_explainer.scoring_llm.classifier import ANSWER_TOKENS_PER_PASSAGE, classifier_messages
from neuron_explainer.simulate.types import SimulatorKind

TEMPLATE_LATENCY_S = 2.0
"""Assumed seconds per API request when no earlier run measured it."""
EXPLANATION_TOKENS = 16
"""Assumed completion tokens of one explanation when no earlier run measured it."""
ANSWER_TOKENS_PER_LINE = 4
"""Assumed completion tokens per `index<TAB>value` answer line (generated simulator) without history."""
MIN_CACHED_PREFIX_TOKENS = 1024
"""Providers cache a prompt prefix only from this length on (OpenAI's rule), so shorter prefixes count as uncached."""
UNMEASURED = "unknown: run a few"
"""Source of a stage that templates cannot size (SASC) and no earlier run measured; its cost is reported unknown."""
DEFAULT_BATCH_DISCOUNT = 0.5
"""Batch API price as a fraction of the standard price, unless data/prices.toml says `batch_discount`."""
_WORDS = (" the", " value", " of", " a", " function", " returns", " list", " when", " and", " is", " 42", ",",
          " object", ".", "\n", " in")


@dataclass(frozen=True)
class StageFigures:
    """What one unit (a neuron's explanation, or one score of it) costs at one stage, per neuron."""

    stage: str
    """`explain:token-pairs`, `simulate:generated`, `score:detection`, ..."""
    backend: str
    """Backend spec the stage calls."""
    model: str
    """Model priced."""
    units_per_neuron: float
    """Units per neuron (explainers x polarities, x3 with baselines for simulation)."""
    requests: float
    """Requests per unit."""
    prompt_tokens: float
    """Prompt tokens per unit."""
    completion_tokens: float
    """Completion tokens per unit."""
    prefix_tokens: float
    """Tokens of the stable prompt prefix per request (what a provider's prompt cache can serve)."""
    latency_s: float
    """Seconds per request."""
    source: str
    """`ledger (N neurons)` or `templates`."""


@dataclass(frozen=True)
class StagePlan:
    """One stage over the whole selection."""

    figures: StageFigures
    """Per-unit figures used."""
    requests: int
    """Requests."""
    prompt_tokens: int
    """Prompt tokens."""
    completion_tokens: int
    """Completion tokens."""
    cost_usd: float | None
    """At standard prices (None: the model has no price)."""
    cost_cached_usd: float | None
    """With the stable prefix served from the provider's prompt cache."""
    cost_batch_usd: float | None
    """Through the Batch API."""
    cost_batch_cached_usd: float | None
    """Batch API and prompt caching together (where a provider stacks the two)."""


@dataclass(frozen=True)
class RunPlan:
    """What a run would cost, stage by stage and in total."""

    neurons: int
    """Neurons selected (sample and limit applied)."""
    selection: str
    """Where the neuron count came from."""
    stages: tuple[StagePlan, ...]
    """LLM stages (LLM-free stages cost nothing and are left out)."""
    requests: int
    """Requests in total."""
    prompt_tokens: int
    """Prompt tokens in total."""
    completion_tokens: int
    """Completion tokens in total."""
    cost_usd: float | None
    """Standard price in total (None when a stage is unpriced)."""
    cost_cached_usd: float | None
    """With prompt caching."""
    cost_batch_usd: float | None
    """Through the Batch API."""
    cost_batch_cached_usd: float | None
    """Both."""
    hours: float
    """Wall time at the configured concurrency and rate limits."""
    bound_by: str
    """Which limit sets `hours`."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def plan_run(config: RunConfig) -> RunPlan:
    """The plan of `config`'s run; reads the record store manifest (or the model config) and the database's
    ledger if they exist, writes nothing and calls no LLM."""
    neurons, selection = _selection(config)
    history = _ledger_history(config.run.db)
    prices = PriceTable.load()
    discount = _batch_discount(prices)
    stages = []
    for figures in _stage_figures(config, history):
        units = neurons * figures.units_per_neuron
        requests = round(units * figures.requests)
        prompt = round(units * figures.prompt_tokens)
        completion = round(units * figures.completion_tokens)
        cached = min(prompt, round(requests * figures.prefix_tokens)) \
            if figures.prefix_tokens >= MIN_CACHED_PREFIX_TOKENS else 0
        cost, cost_cached = _cost(prices, figures, prompt, completion, cached)
        stages.append(StagePlan(figures=figures, requests=requests, prompt_tokens=prompt, completion_tokens=completion,
                                cost_usd=cost, cost_cached_usd=cost_cached,
                                cost_batch_usd=None if cost is None else cost * discount,
                                cost_batch_cached_usd=None if cost_cached is None else cost_cached * discount))

    def total(name: str) -> float | None:
        values = [getattr(stage, name) for stage in stages]
        return None if any(value is None for value in values) else float(sum(values))

    hours, bound_by = _hours(config, stages)
    return RunPlan(neurons=neurons, selection=selection, stages=tuple(stages),
                   requests=sum(stage.requests for stage in stages),
                   prompt_tokens=sum(stage.prompt_tokens for stage in stages),
                   completion_tokens=sum(stage.completion_tokens for stage in stages),
                   cost_usd=total("cost_usd"), cost_cached_usd=total("cost_cached_usd"),
                   cost_batch_usd=total("cost_batch_usd"), cost_batch_cached_usd=total("cost_batch_cached_usd"),
                   hours=hours, bound_by=bound_by)


# --- the selection -----------------------------------------------------------------------------------------


def _selection(config: RunConfig) -> tuple[int, str]:
    """Neurons the run would select: from the record store when one exists, else from the model's config."""
    from neuron_explainer.activations import RecordStore
    from neuron_explainer.pipeline.run import recording_directory, select_neurons
    from neuron_explainer.core.neurons import parse_layers, parse_neuron_spec

    path = Path(config.record.records) if config.record.records else recording_directory(config)
    if config.record.records or (path / "manifest.json").is_file():
        count = len(select_neurons(RecordStore.open(path), config))
        source = f"record store {path}"
    else:
        num_layers, per_layer = _model_layout(config.record.model)
        layers = set(parse_layers(config.record.layers, num_layers))
        if config.explain.neurons.strip() == "all":
            count = len(layers) * per_layer
        else:
            chosen = parse_neuron_spec(config.explain.neurons, num_layers, per_layer)
            count = sum(1 for neuron in chosen if neuron.layer in layers)
        source = f"model config of {config.record.model} ({num_layers} layers x {per_layer} neurons)"
        if config.explain.sample is not None:
            count = min(count, config.explain.sample)
    if config.run.limit is not None:
        count = min(count, config.run.limit)
    return count, source


def _model_layout(spec: str) -> tuple[int, int]:
    """(layers, MLP neurons per layer) of a model: read from a local directory's config.json when it names them
    (milliseconds), else from the module tree built on the meta device (seconds)."""
    import json

    config_file = Path(spec) / "config.json"
    if config_file.is_file():
        values = json.loads(config_file.read_text(encoding="utf-8"))
        values = values.get("text_config", values)
        layers = next((values[key] for key in ("num_hidden_layers", "n_layer", "num_layers") if key in values), None)
        width = next((values[key] for key in ("intermediate_size", "n_inner", "ffn_dim") if values.get(key)), None)
        if width is None and values.get("n_embd"):
            width = 4 * values["n_embd"]
        if isinstance(layers, int) and isinstance(width, int):
            return layers, width
    from neuron_explainer.subject.info import describe_model

    info = describe_model(spec)
    return info.num_layers, info.neurons_per_layer


# --- per-neuron figures ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Measured:
    units: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    latency_s: float


def _ledger_history(url: str) -> dict[tuple[str, str], _Measured]:
    """(stage, model) -> what earlier runs paid for it (calls that reached the backend, labelled with a neuron)."""
    from sqlalchemy import func, select

    from neuron_explainer.db import open_database
    from neuron_explainer.db.models import LLMCallRow

    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///").split("?", 1)[0]).is_file():
        return {}
    try:
        database = open_database(url, create=False)
    except UserError:
        return {}
    calls = LLMCallRow.__table__
    statement = (select(calls.c.stage, calls.c.model, func.count(func.distinct(calls.c.unit)), func.count(),
                        func.sum(calls.c.prompt_tokens), func.sum(calls.c.completion_tokens),
                        func.sum(calls.c.latency_s))
                 .where(calls.c.unit != "", calls.c.from_cache.is_(False)).group_by(calls.c.stage, calls.c.model))
    with database, database.reader() as connection:
        return {(row[0], row[1]): _Measured(units=int(row[2]), requests=int(row[3]), prompt_tokens=int(row[4] or 0),
                                            completion_tokens=int(row[5] or 0), latency_s=float(row[6] or 0.0))
                for row in connection.execute(statement)}


def _synthetic_windows(count: int, length: int) -> list[Window]:
    """Windows of ordinary English-and-code tokens, one firing token each, sized like the run's windows."""
    windows = []
    for index in range(count):
        tokens = tuple(_WORDS[(index + position) % len(_WORDS)] for position in range(length))
        activations = tuple(1.0 if position == (index * 7) % length else 0.0 for position in range(length))
        windows.append(Window(window_id=index, tokens=tokens, activations=activations))
    return windows


def _tokens(messages: tuple[Message, ...] | list[Message]) -> int:
    return estimate_tokens(messages)


def _default_simulator(spec: str) -> SimulatorKind:
    parsed = parse_backend_spec(spec)
    if parsed.kind is BackendKind.LOCAL:
        return SimulatorKind.ALL_AT_ONCE
    slots = parsed.options.get("slots", "none") != "none" or any(
        parsed.options.get(name, "0").lower() in ("", "1", "true", "yes", "on") for name in ("prompt_logprobs", "echo")
        if name in parsed.options)
    return SimulatorKind.ALL_AT_ONCE if slots else SimulatorKind.GENERATED


def _template_weights() -> str:
    """A weight-view paragraph of the size `--explain-with-weights` adds: ten short tokens per list."""
    from neuron_explainer.activations.weight_views import NeuronWeightView, TokenWeight
    from neuron_explainer.core.prompts import load_prompt_files
    from neuron_explainer.explain.token_pairs import PROMPT_FILES_WITH_WEIGHTS, weight_view_text

    items = tuple(TokenWeight(0, " abc", 1.0) for _ in range(10))
    view = NeuronWeightView(NeuronId(0, 0), items, items, items, items)
    return weight_view_text(load_prompt_files(PROMPT_FILES_WITH_WEIGHTS), view, polarity=Polarity.POSITIVE, tokens=10)


def _stage_figures(config: RunConfig, history: dict[tuple[str, str], _Measured]) -> list[StageFigures]:
    """Per-unit figures of every LLM stage the run has."""
    polarities = 2 if config.record.polarity == "both" else 1
    explainers = [ExplainerKind(name) for name in config.explain.explainers]
    windows = _synthetic_windows(config.split.explain_windows, config.record.ctx)
    simulated_windows = config.split.score_top_windows + config.split.score_random_windows + 5 + 5
    figures: list[StageFigures] = []

    def add(stage: str, spec: str, units: float, template: tuple[float, float, float, float]) -> None:
        model = parse_backend_spec(spec).model
        measured = history.get((stage, model))
        requests, prompt, completion, prefix = template
        if measured is not None and measured.units > 0:
            figures.append(StageFigures(
                stage=stage, backend=spec, model=model, units_per_neuron=units,
                requests=measured.requests / measured.units, prompt_tokens=measured.prompt_tokens / measured.units,
                completion_tokens=measured.completion_tokens / measured.units, prefix_tokens=prefix,
                latency_s=measured.latency_s / max(measured.requests, 1),
                source=f"ledger ({measured.units} neurons)"))
        else:
            figures.append(StageFigures(stage=stage, backend=spec, model=model, units_per_neuron=units,
                                        requests=requests, prompt_tokens=prompt, completion_tokens=completion,
                                        prefix_tokens=prefix, latency_s=TEMPLATE_LATENCY_S,
                                        source="templates" if requests else UNMEASURED))

    for kind in explainers:
        if kind is ExplainerKind.TOKEN_PAIRS:
            weights = _template_weights() if config.explain.with_weights else ""
            prompt = build_prompt(scale_windows(windows), token_budget=10**9, weights=weights)
            assert prompt is not None
            prefix = _tokens(prompt.messages[:-1])
            add(f"explain:{kind.value}", config.llm.backend, polarities,
                (1.0, prompt.estimated_tokens, EXPLANATION_TOKENS * config.explain.candidates, prefix))
        elif kind is ExplainerKind.SASC:
            # SASC's request count depends on its candidates and synthetic texts: only a measured run says.
            add(f"explain:{kind.value}", config.llm.backend, polarities, (0.0, 0.0, 0.0, 0.0))
    kinds = scorer_kinds(config.score.scorers)
    scorer_spec = config.llm.simulator_backend or config.llm.backend
    if ScorerKind.SIMULATION in kinds:
        simulator = (SimulatorKind(config.simulate.simulator) if config.simulate.simulator
                     else _default_simulator(scorer_spec))
        units = len(explainers) * polarities * (3 if config.score.baselines else 1)
        window = windows[0].tokens
        if simulator is SimulatorKind.GENERATED:
            from neuron_explainer.core.prompts import load_prompt_files
            from neuron_explainer.simulate.generated import PROMPT_FILES, build_generated_messages

            messages = build_generated_messages(load_prompt_files(PROMPT_FILES), "the word value", window)
            add(f"simulate:{simulator.value}", scorer_spec, units,
                (simulated_windows, simulated_windows * _tokens(messages),
                 simulated_windows * ANSWER_TOKENS_PER_LINE * config.record.ctx, _tokens(messages[:-1])))
        elif simulator is SimulatorKind.ALL_AT_ONCE:
            from neuron_explainer.core.prompts import load_prompt_files
            from neuron_explainer.simulate.all_at_once import PROMPT_FILES, build_preamble, build_slot_prompt

            files = load_prompt_files(PROMPT_FILES)
            preamble = build_preamble(files)
            slot_prompt = build_slot_prompt(files, preamble, "the word value", window)
            size = _tokens([Message("user", slot_prompt.prefix + "".join(slot_prompt.pieces))])
            add(f"simulate:{simulator.value}", scorer_spec, units,
                (simulated_windows, simulated_windows * size, simulated_windows,
                 _tokens([Message("user", preamble)])))
    for kind in kinds:
        if kind is ScorerKind.SIMULATION:
            continue
        passages = config.split.score_top_windows + (
            config.split.score_random_windows if kind is ScorerKind.DETECTION else 0)
        per_request = 10
        requests = math.ceil(passages / per_request)
        batch = [(windows[0].tokens, (0,) if kind is ScorerKind.FUZZING else ())] * min(per_request, passages)
        messages = classifier_messages(kind, "the word value", batch)
        add(f"score:{kind.value}", scorer_spec, len(explainers) * polarities,
            (requests, passages / len(batch) * _tokens(messages), passages * ANSWER_TOKENS_PER_PASSAGE,
             _tokens(messages[:-1])))
    return figures


def _batch_discount(prices: PriceTable) -> float:
    return prices.batch_discount if prices.batch_discount is not None else DEFAULT_BATCH_DISCOUNT


def _cost(prices: PriceTable, figures: StageFigures, prompt: int, completion: int,
          cached: int) -> tuple[float | None, float | None]:
    if parse_backend_spec(figures.backend).kind is BackendKind.LOCAL:
        return 0.0, 0.0
    if figures.source == UNMEASURED:
        return None, None
    price = prices.price(figures.model)
    if price is None:
        return None, None
    return price.cost(prompt, completion, 0), price.cost(prompt, completion, cached)


def _hours(config: RunConfig, stages: list[StagePlan]) -> tuple[float, str]:
    """Wall time: the slowest of request latency over the concurrency, the request rate and the token rate."""
    api = [stage for stage in stages if parse_backend_spec(stage.figures.backend).kind is BackendKind.OPENAI]
    if not api:
        return 0.0, "no API requests"
    requests = sum(stage.requests for stage in api)
    tokens = sum(stage.prompt_tokens + stage.completion_tokens for stage in api)
    bounds = {f"latency at concurrency {config.run.concurrency}":
              sum(stage.requests * stage.figures.latency_s for stage in api) / config.run.concurrency / 3600}
    if config.llm.rpm:
        bounds[f"rpm {config.llm.rpm}"] = requests / config.llm.rpm / 60
    if config.llm.tpm:
        bounds[f"tpm {config.llm.tpm}"] = tokens / config.llm.tpm / 60
    bound_by = max(bounds, key=bounds.__getitem__)
    return bounds[bound_by], bound_by


def format_plan(plan: RunPlan) -> str:
    """The plan as a table for the terminal."""
    def money(value: float | None) -> str:
        return "unpriced" if value is None else f"${value:,.2f}"

    lines = [f"plan for {plan.neurons:,} neurons ({plan.selection}); finished neurons are not subtracted",
             f"{'stage':<22} {'model':<20} {'source':<20} {'req/neuron':>10} {'prompt/neuron':>13} "
             f"{'compl/neuron':>12} {'standard':>12} {'batch':>12}"]
    for stage in plan.stages:
        figures = stage.figures
        per = figures.units_per_neuron
        lines.append(f"{figures.stage:<22} {figures.model[:20]:<20} {figures.source[:20]:<20} "
                     f"{figures.requests * per:>10,.1f} {figures.prompt_tokens * per:>13,.0f} "
                     f"{figures.completion_tokens * per:>12,.0f} {money(stage.cost_usd):>12} "
                     f"{money(stage.cost_batch_usd):>12}")
    lines += [f"total: {plan.requests:,} requests, {plan.prompt_tokens:,} prompt + {plan.completion_tokens:,} "
              "completion tokens",
              f"cost: standard {money(plan.cost_usd)}, with prompt caching {money(plan.cost_cached_usd)}, "
              f"batch {money(plan.cost_batch_usd)}, batch + caching {money(plan.cost_batch_cached_usd)}",
              f"time: {plan.hours:,.1f} hours (bound by {plan.bound_by})"]
    return "\n".join(lines)
