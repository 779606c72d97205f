"""What the `explain` and `score` commands do: read a record store, run the stage over many neurons with a
concurrency limit and a progress bar, and write one JSON object per line (explanations, scores, failures)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from neuron_explainer.core.event_loop import run_async
from neuron_explainer.activations.records import NeuronRecord
from neuron_explainer.core.errors import UserError
from neuron_explainer.core.failures import Failure
from neuron_explainer.core.neurons import NeuronId, parse_neuron_spec
from neuron_explainer.core.units import BatchSummary, run_units
from neuron_explainer.explain.api import ExplainConfig
from neuron_explainer.explain.base import Explainer, ExplainerSettings
from neuron_explainer.explain.registry import explainer_class
from neuron_explainer.explain.serialize import explanation_from_dict, explanation_to_dict, failure_to_dict
from neuron_explainer.explain.splits import check_split_groups
from neuron_explainer.explain.types import Explanation, Polarity
from neuron_explainer.scoring import SCORERS, ScoreConfig, Scorer, run_scorer
from neuron_explainer.scoring_llm.serialize import classifier_score_to_dict
from neuron_explainer.scoring_llm.types import ClassifierScore
from neuron_explainer.simulate.serialize import score_to_dict
from neuron_explainer.simulate.types import Score

POLARITY_CHOICES = {"positive": (Polarity.POSITIVE,), "negative": (Polarity.NEGATIVE,),
                    "both": (Polarity.POSITIVE, Polarity.NEGATIVE)}


@dataclass(frozen=True)
class CommandSummary:
    """What a command did, for its final JSON line."""

    out: str
    """The JSONL file written."""
    neurons: int
    """Neurons selected."""
    succeeded: int
    """Explanations or scores written."""
    failed: int
    """Failures written."""
    prompt_tokens: int
    """Prompt tokens spent."""
    completion_tokens: int
    """Completion tokens spent."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dict(self.__dict__)


def select_neurons(spec: str, *, layers: Sequence[int], neurons_per_layer: int) -> list[NeuronId]:
    """Neurons of a SPEC among the recorded layers (`all` = every recorded neuron)."""
    if spec.strip() == "all":
        return [NeuronId(layer, neuron) for layer in sorted(layers) for neuron in range(neurons_per_layer)]
    chosen = parse_neuron_spec(spec, max(layers) + 1, neurons_per_layer)
    missing = sorted({neuron.layer for neuron in chosen} - set(layers))
    if missing:
        recorded = ", ".join(str(layer) for layer in sorted(layers))
        raise UserError(f"layer(s) {', '.join(map(str, missing))} were not recorded (recorded: {recorded})")
    return chosen


class _JsonlWriter:
    """Writes each result as one JSON line as soon as it arrives (a crash keeps what finished)."""

    def __init__(self, handle: IO[str]) -> None:
        self.handle = handle

    def __call__(self, result: Explanation | Score | ClassifierScore | Failure) -> None:
        if isinstance(result, Explanation):
            data = explanation_to_dict(result)
        elif isinstance(result, Score):
            data = score_to_dict(result)
        elif isinstance(result, ClassifierScore):
            data = classifier_score_to_dict(result)
        else:
            data = failure_to_dict(result)
        self.handle.write(json.dumps(data, ensure_ascii=False, allow_nan=False) + "\n")
        self.handle.flush()


def _open_out(out: str | Path) -> IO[str]:
    path = Path(out)
    if path.parent and not path.parent.exists():
        raise UserError(f"cannot write {path}: directory {path.parent} does not exist")
    try:
        return path.open("w", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def _summary(out: str | Path, neurons: int, batch: BatchSummary) -> CommandSummary:
    return CommandSummary(out=str(out), neurons=neurons, succeeded=batch.succeeded, failed=batch.failed,
                          prompt_tokens=batch.prompt_tokens, completion_tokens=batch.completion_tokens)


def run_explain(records: str | Path, neurons: str, *, llm: str, out: str | Path,
                config: ExplainConfig = ExplainConfig(), polarity: str = "positive", simulator: str | None = None,
                explainer: str = "token-pairs", concurrency: int = 8, progress: bool = True) -> CommandSummary:
    """Explain the selected neurons of a record store with a registered explainer (default token-pairs); write
    JSONL to `out`.

    With `config.candidates > 1` the best candidate is picked by simulating the calibrate windows with
    `simulator` (default: the best the backend allows).
    """
    from neuron_explainer.activations import RecordStore
    from neuron_explainer.llm import check_backend
    from neuron_explainer.pipeline.resources import BackendSettings, RunResources

    explainer_type = explainer_class(explainer)
    if polarity not in POLARITY_CHOICES:
        raise UserError(f"unknown polarity {polarity!r}: use positive, negative or both")
    if explainer_type.needs.llm:
        check_backend(llm)
    store = RecordStore.open(records)
    check_split_groups(config.split, has_document_ids=store.has_document_ids, store=store.path)
    if Polarity.NEGATIVE in POLARITY_CHOICES[polarity] and store.manifest.polarity != "both":
        raise UserError(f"--polarity {polarity}: the recording {store.path} has no negative windows (recorded with "
                        f"polarity {store.manifest.polarity}); record with --polarity both")
    selected = select_neurons(neurons, layers=store.layers, neurons_per_layer=store.neurons_per_layer)
    if config.with_weights:
        from neuron_explainer.pipeline.explainers import check_weight_view_inputs

        check_weight_view_inputs([explainer], store, selected)

    async def go() -> BatchSummary:
        resources = RunResources(BackendSettings(llm=llm, simulator=simulator), store, split=config.split)
        try:
            explainers = [explainer_type(ExplainerSettings(split=config.split, polarity=side,
                                                           candidates=config.candidates,
                                                           with_weights=config.with_weights), resources)
                          for side in POLARITY_CHOICES[polarity]]
            units = [_explain_unit(each, store, neuron) for neuron in selected for each in explainers]
            with _open_out(out) as handle:
                return await run_units(units, concurrency=concurrency, on_result=_JsonlWriter(handle),
                                       description="explain", progress=progress)
        finally:
            await resources.aclose()

    return _summary(out, len(selected), run_async(go()))


def _explain_unit(explainer: Explainer, store: Any, neuron: NeuronId) -> Callable[[], Awaitable[Explanation | Failure]]:
    async def run() -> Explanation | Failure:
        return await explainer.explain(store.load_neuron(neuron.layer, neuron.neuron))
    return run


def read_explanations(path: str | Path) -> list[Explanation]:
    """The explanations in a JSONL file written by `explain` (other lines, e.g. failures, are skipped)."""
    source = Path(path)
    if not source.is_file():
        raise UserError(f"no explanations file at {source}")
    explanations = []
    with source.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if data.get("type") == "explanation":
                    explanations.append(explanation_from_dict(data))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
                raise UserError(f"{source}:{number}: not an explanation record ({exc})") from None
    return explanations


def run_score(records: str | Path, neurons: str, *, explanations: str | Path, out: str | Path,
              scorer: str = "simulation", simulator: str | None = None, llm: str | None = None,
              config: ScoreConfig = ScoreConfig(), baselines: bool = False, concurrency: int = 8,
              progress: bool = True) -> CommandSummary:
    """Score the explanations (from `explain`'s JSONL) of the selected neurons with a registered scorer (default
    simulation; detection and fuzzing ask the `llm` chat model); write JSONL to `out`.
    Shuffled baselines follow a seeded derangement over the file's neurons (scoring/baselines.py), so each
    selected neuron gets a donor of its own even when one neuron is selected."""
    from neuron_explainer.activations import RecordStore
    from neuron_explainer.llm import check_backend
    from neuron_explainer.pipeline.resources import BackendSettings, RunResources

    scorer_type = SCORERS.get(scorer)
    if scorer_type.needs.llm and not llm:
        raise UserError(f"--scorer {scorer} asks a chat model: give one with --llm")
    if baselines and scorer_type.baselines is Scorer.baselines:
        raise UserError(f"--baselines: the {scorer} scorer has no baselines (the simulation scorer has)")
    if llm:
        check_backend(llm)
    store = RecordStore.open(records)
    check_split_groups(config.split, has_document_ids=store.has_document_ids, store=store.path)
    selected = set(select_neurons(neurons, layers=store.layers, neurons_per_layer=store.neurons_per_layer))
    every = read_explanations(explanations)
    chosen = [explanation for explanation in every if explanation.neuron in selected]

    def load(neuron: NeuronId) -> NeuronRecord:
        return store.load_neuron(neuron.layer, neuron.neuron)

    async def go() -> BatchSummary:
        resources = RunResources(BackendSettings(llm=llm, simulator=simulator), store, split=config.split)
        try:
            chosen_scorer = scorer_type(resources)
            with _open_out(out) as handle:
                return await run_scorer(load, chosen, chosen_scorer, config=config, baselines=baselines,
                                        concurrency=concurrency, on_result=_JsonlWriter(handle), donor_pool=every,
                                        progress=progress)
        finally:
            await resources.aclose()

    return _summary(out, len({explanation.neuron for explanation in chosen}), run_async(go()))
