"""`eval real`: how the loop behaves on a real recording, from the results database and the record store.

For every method (explainer + explainer model + simulator + simulator model) found in the database for the
store's subject model: the score distribution per layer, the matched-minus-shuffled gap (the loop's health
metric), agreement between methods (Spearman correlation across the neurons both scored) and stability (the
same neuron explained and scored with two split seeds). Shuffled baselines come from the scores when they were
stored with them (`--baselines`); otherwise they can be computed from the record store with a given simulator.
When a neuron has several results of one method and split seed (a re-run with new prompts or settings), the
newest counts.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from neuron_explainer.core.event_loop import run_async
from neuron_explainer.core.errors import UserError
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.eval.tables import json_ready, number, table

NAN = float("nan")


@dataclass(frozen=True)
class ScoredExplanation:
    """One stored (explanation, score) pair, reduced to what the report needs."""

    neuron: NeuronId
    """The neuron."""
    group: str
    """`method[explainer model] / simulator[simulator model]`."""
    simulator: str
    """Simulator kind that made the score."""
    split_seed: int
    """Split seed of the explanation and score."""
    text: str
    """The explanation."""
    score: float
    """Pooled Pearson (NaN when undefined)."""
    score_top: float
    """Pearson over held-out top windows."""
    score_random: float
    """Pearson over random windows."""
    shuffled: float
    """Score of another neuron's explanation on this neuron (NaN when not computed)."""
    ceiling: float = NAN
    """The neuron's lexical ceiling on the same windows (NaN when undefined or not computed)."""
    has_ceiling: bool = False
    """True when the ceiling was computed (it may still be undefined)."""
    has_shuffled: bool = False
    """True when the shuffled baseline was computed (it may still be undefined)."""
    split: dict[str, Any] = field(default_factory=dict)
    """The split settings the score was made with (from its stored parameters), for baselines on the same windows."""
    order: int = 0
    """Increases with the time the score was stored (its row id): the newest result of a method wins."""


@dataclass(frozen=True)
class Distribution:
    """Summary of a set of scores."""

    count: int
    """Defined scores."""
    undefined: int
    """Scores that are NaN."""
    mean: float
    """Mean."""
    median: float
    """Median."""
    p10: float
    """10th percentile."""
    p90: float
    """90th percentile."""
    fraction_above_half: float
    """Fraction of defined scores >= 0.5."""
    mean_top: float
    """Mean top-window-only score."""
    mean_random: float
    """Mean random-window-only score."""


@dataclass(frozen=True)
class VersusCeiling:
    """One layer's explanations side by side with the lexical ceiling and the shuffled floor (undefined = 0)."""

    neurons: int
    """Neurons with a score and a computed ceiling."""
    score: float
    """Mean score, undefined counted as 0."""
    ceiling: float
    """Mean lexical ceiling of the same neurons, undefined counted as 0."""
    shuffled: float
    """Mean shuffled score of those with one stored, undefined counted as 0 (NaN when none)."""
    beats_ceiling: float
    """Fraction of neurons whose score is at least their ceiling."""

    @property
    def verdict(self) -> str:
        """`above ceiling` when the mean score reaches the mean ceiling, else `below ceiling`."""
        if not self.neurons:
            return "no ceiling"
        return "above ceiling" if self.score >= self.ceiling else "below ceiling"


@dataclass(frozen=True)
class GroupReport:
    """One method's results on the recording."""

    group: str
    """Method label."""
    overall: Distribution
    """Over every neuron (first split seed)."""
    layers: dict[int, Distribution]
    """Per layer (first split seed)."""
    coverage: dict[int, float]
    """Per layer, the fraction of the layer's recorded neurons with a score."""
    matched_mean: float
    """Mean score of neurons with a shuffled baseline."""
    shuffled_mean: float
    """Mean shuffled score on the same neurons."""
    gap: float
    """matched_mean - shuffled_mean."""
    gap_neurons: int
    """Neurons in the gap."""
    versus_ceiling: dict[int, dict[int, VersusCeiling]] = field(default_factory=dict)
    """Per split seed and layer, the explanations against the lexical ceiling (an explanation below it says less
    than a token lookup would)."""


@dataclass(frozen=True)
class Agreement:
    """How two methods agree on which neurons are well explained."""

    first: str
    """One method."""
    second: str
    """The other."""
    neurons: int
    """Neurons both scored."""
    spearman: float
    """Spearman correlation of their scores across those neurons (NaN with fewer than 3)."""


@dataclass(frozen=True)
class Stability:
    """The same method run twice on the same neurons with different split seeds."""

    group: str
    """Method."""
    seeds: tuple[int, int]
    """The two split seeds compared."""
    neurons: int
    """Neurons scored under both."""
    spearman: float
    """Spearman correlation of the two scores across neurons."""
    mean_absolute_difference: float
    """Mean |score(seed a) - score(seed b)|."""
    same_text: float
    """Fraction of neurons whose explanation text is identical under both seeds."""


@dataclass(frozen=True)
class RealReport:
    """The real-neuron evaluation."""

    model_id: str
    """Subject model."""
    records: str
    """Record store."""
    layers: tuple[int, ...]
    """Recorded layers."""
    neurons_per_layer: int
    """Neurons per recorded layer."""
    groups: tuple[GroupReport, ...]
    """Per method."""
    agreement: tuple[Agreement, ...]
    """Per pair of methods."""
    stability: tuple[Stability, ...]
    """Per method with two split seeds."""
    notes: tuple[str, ...]
    """What could not be computed and why."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN becomes None)."""
        return json_ready(asdict(self))


def _finite(values: Iterable[float]) -> list[float]:
    return [value for value in values if math.isfinite(value)]


def distribution(items: Sequence[ScoredExplanation]) -> Distribution:
    """Summary of the scores of `items`."""
    scores = _finite(item.score for item in items)
    top = _finite(item.score_top for item in items)
    random_only = _finite(item.score_random for item in items)
    if not scores:
        return Distribution(0, len(items), NAN, NAN, NAN, NAN, NAN, NAN, NAN)
    p10, p90 = np.percentile(scores, [10, 90])
    return Distribution(
        count=len(scores), undefined=len(items) - len(scores), mean=statistics.fmean(scores),
        median=statistics.median(scores), p10=float(p10), p90=float(p90),
        fraction_above_half=sum(score >= 0.5 for score in scores) / len(scores),
        mean_top=statistics.fmean(top) if top else NAN, mean_random=statistics.fmean(random_only) if random_only else NAN)


def _zero_if_undefined(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def versus_ceiling(items: Sequence[ScoredExplanation]) -> VersusCeiling:
    """Scores against the lexical ceiling and the shuffled floor on the items whose ceiling was computed."""
    with_ceiling = [item for item in items if item.has_ceiling]
    if not with_ceiling:
        return VersusCeiling(0, NAN, NAN, NAN, NAN)
    shuffled = [_zero_if_undefined(item.shuffled) for item in with_ceiling if item.has_shuffled]
    return VersusCeiling(
        neurons=len(with_ceiling), score=statistics.fmean(_zero_if_undefined(item.score) for item in with_ceiling),
        ceiling=statistics.fmean(_zero_if_undefined(item.ceiling) for item in with_ceiling),
        shuffled=statistics.fmean(shuffled) if shuffled else NAN,
        beats_ceiling=statistics.fmean(_zero_if_undefined(item.score) >= _zero_if_undefined(item.ceiling)
                                       for item in with_ceiling))


def _versus_ceiling_per_layer(items: Iterable[ScoredExplanation]) -> dict[int, VersusCeiling]:
    per_layer: dict[int, list[ScoredExplanation]] = {}
    for item in items:
        per_layer.setdefault(item.neuron.layer, []).append(item)
    return {layer: versus_ceiling(layer_items) for layer, layer_items in sorted(per_layer.items())}


def _ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n with tied values sharing their mean rank."""
    array = np.asarray(values, dtype=np.float64)
    order = np.argsort(array, kind="stable")
    ranks = np.empty(len(array), dtype=np.float64)
    ranks[order] = np.arange(1, len(array) + 1)
    for value in np.unique(array):
        tied = array == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(first: Sequence[float], second: Sequence[float]) -> float:
    """Spearman rank correlation (NaN with fewer than 3 pairs or a constant side)."""
    pairs = [(a, b) for a, b in zip(first, second) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return NAN
    left, right = (_ranks(side) for side in zip(*pairs))
    if np.ptp(left) == 0 or np.ptp(right) == 0:
        return NAN
    return float(np.corrcoef(left, right)[0, 1])


def _by_seed(items: Sequence[ScoredExplanation]) -> dict[int, dict[NeuronId, ScoredExplanation]]:
    """Per split seed, one item per neuron: the newest, so a method re-run with new settings (prompts, explainer
    parameters) reports its latest results rather than the best of old and new."""
    result: dict[int, dict[NeuronId, ScoredExplanation]] = {}
    for item in items:
        chosen = result.setdefault(item.split_seed, {})
        current = chosen.get(item.neuron)
        if current is None or item.order > current.order:
            chosen[item.neuron] = item
    return result


def build_real_report(items: Sequence[ScoredExplanation], *, model_id: str, records: str,
                      layers: Sequence[int], neurons_per_layer: int) -> RealReport:
    """The report from stored results (already reduced to `ScoredExplanation`s of one subject model)."""
    notes: list[str] = []
    groups: dict[str, list[ScoredExplanation]] = {}
    for item in items:
        groups.setdefault(item.group, []).append(item)
    if not groups:
        notes.append(f"no scored explanations of {model_id} in the database")
    group_reports = []
    first_seed_items: dict[str, dict[NeuronId, ScoredExplanation]] = {}
    stability = []
    for group, members in sorted(groups.items()):
        seeds = _by_seed(members)
        first_seed = min(seeds)
        primary = seeds[first_seed]
        first_seed_items[group] = primary
        chosen = list(primary.values())
        per_layer: dict[int, list[ScoredExplanation]] = {}
        for item in chosen:
            per_layer.setdefault(item.neuron.layer, []).append(item)
        with_baseline = [item for item in chosen if math.isfinite(item.shuffled) and math.isfinite(item.score)]
        matched = statistics.fmean(item.score for item in with_baseline) if with_baseline else NAN
        shuffled = statistics.fmean(item.shuffled for item in with_baseline) if with_baseline else NAN
        if not with_baseline:
            notes.append(f"{group}: no shuffled baselines stored (score with --baselines, or pass --simulator "
                         f"{members[0].simulator})")
        group_reports.append(GroupReport(
            group=group, overall=distribution(chosen),
            layers={layer: distribution(layer_items) for layer, layer_items in sorted(per_layer.items())},
            coverage={layer: len(per_layer.get(layer, [])) / neurons_per_layer for layer in layers},
            matched_mean=matched, shuffled_mean=shuffled, gap=matched - shuffled, gap_neurons=len(with_baseline),
            versus_ceiling={seed: _versus_ceiling_per_layer(by_neuron.values()) for seed, by_neuron in sorted(seeds.items())}))
        if len(seeds) >= 2:
            seed_a, seed_b = sorted(seeds)[:2]
            common = sorted(set(seeds[seed_a]) & set(seeds[seed_b]))
            first = [seeds[seed_a][neuron].score for neuron in common]
            second = [seeds[seed_b][neuron].score for neuron in common]
            differences = _finite(abs(a - b) for a, b in zip(first, second))
            stability.append(Stability(
                group=group, seeds=(seed_a, seed_b), neurons=len(common), spearman=spearman(first, second),
                mean_absolute_difference=statistics.fmean(differences) if differences else NAN,
                same_text=(sum(seeds[seed_a][neuron].text == seeds[seed_b][neuron].text for neuron in common)
                           / len(common)) if common else NAN))
        else:
            notes.append(f"{group}: one split seed only; run again with another --seed to measure stability")
    agreement = []
    for first_group, second_group in combinations(sorted(first_seed_items), 2):
        common = sorted(set(first_seed_items[first_group]) & set(first_seed_items[second_group]))
        agreement.append(Agreement(
            first=first_group, second=second_group, neurons=len(common),
            spearman=spearman([first_seed_items[first_group][neuron].score for neuron in common],
                              [first_seed_items[second_group][neuron].score for neuron in common])))
    if len(groups) < 2:
        notes.append("one method only; explain with several (--explainer token-pairs,sasc,lexicon) to compare them")
    return RealReport(model_id=model_id, records=records, layers=tuple(layers), neurons_per_layer=neurons_per_layer,
                      groups=tuple(group_reports), agreement=tuple(agreement), stability=tuple(stability),
                      notes=tuple(notes))


def _group_label(method: str, explainer_model: str, simulator: str, simulator_model: str) -> str:
    explainer = method if explainer_model in ("", "none") else f"{method}[{explainer_model}]"
    scorer = simulator if simulator_model in ("", "none") else f"{simulator}[{simulator_model}]"
    return f"{explainer} / {scorer}"


def load_scored_explanations(db: str, *, model_id: str, layers: Sequence[int] = (),
                             polarity: str = "positive") -> list[ScoredExplanation]:
    """Every stored (explanation, score) pair of `model_id` on one polarity, from the database at `db`."""
    from neuron_explainer.db import ExplanationQuery, SortOrder, open_database

    query = ExplanationQuery(model=model_id, layers=tuple(layers), limit=None, best_per_neuron=False,
                             sort=SortOrder.LAYER, polarity=polarity)
    with open_database(db, create=False) as database:
        rows = database.query(query)
    return [ScoredExplanation(
        neuron=row.neuron, group=_group_label(row.method, row.explainer_model, row.simulator, row.simulator_model),
        simulator=row.simulator, split_seed=row.split_seed, text=row.text, score=row.score, score_top=row.pearson_top,
        score_random=row.pearson_random, shuffled=row.baselines.get("shuffled", NAN),
        ceiling=row.lexical_ceiling, has_ceiling="lexical_ceiling" in row.baselines,
        has_shuffled="shuffled" in row.baselines,
        split={key: row.score_parameters[key] for key in _SPLIT_KEYS if key in row.score_parameters},
        order=row.score_id)
        for row in rows]


_SPLIT_KEYS = ("explain_top", "score_top", "score_random", "calibrate_top", "calibrate_random", "stratified")


async def fill_shuffled_baselines(items: Sequence[ScoredExplanation], store: Any, simulator: Any, *,
                                  concurrency: int = 8, polarity: str = "positive") -> list[ScoredExplanation]:
    """Items with missing shuffled baselines computed: each neuron scored with another neuron's explanation of
    the same method and seed (a seeded derangement), by `simulator` on the neuron's recorded windows. Only items
    scored by the same kind of simulator get one, so a baseline is always comparable with its score."""
    from dataclasses import replace

    from neuron_explainer.explain.splits import SplitConfig
    from neuron_explainer.explain.types import Polarity
    from neuron_explainer.scoring import ScoreConfig, compute_baselines, shuffled_explanations

    pools: dict[tuple[str, int], dict[NeuronId, str]] = {}
    for item in items:
        pools.setdefault((item.group, item.split_seed), {})[item.neuron] = item.text
    assignments = {key: shuffled_explanations(texts, seed=key[1]) for key, texts in pools.items()}
    missing = [index for index, item in enumerate(items) if not math.isfinite(item.shuffled)
               and item.simulator == simulator.kind.value
               and item.neuron in assignments[(item.group, item.split_seed)]]
    semaphore = asyncio.Semaphore(max(1, concurrency))

    async def one(index: int) -> tuple[int, float]:
        item = items[index]
        async with semaphore:
            record = store.load_neuron(item.neuron.layer, item.neuron.neuron)
            config = ScoreConfig(split=SplitConfig(seed=item.split_seed, **item.split), bootstrap_samples=0,
                                 polarity=Polarity(polarity))
            values = await compute_baselines(
                record, simulator, config=config,
                shuffled_explanation=assignments[(item.group, item.split_seed)][item.neuron])
            return index, values.get("shuffled", NAN)

    found = dict(await asyncio.gather(*(one(index) for index in missing)))
    return [replace(item, shuffled=found[index], has_shuffled=True) if index in found else item
            for index, item in enumerate(items)]


def fill_lexical_ceilings(items: Sequence[ScoredExplanation], store: Any, *,
                          polarity: str = "positive") -> list[ScoredExplanation]:
    """Items (all of one polarity) with missing lexical ceilings computed from the record store on each score's
    own split (no simulator or LLM involved, so every score gets one)."""
    from dataclasses import replace

    from neuron_explainer.explain.splits import SplitConfig
    from neuron_explainer.explain.types import Polarity
    from neuron_explainer.scoring import ScoreConfig, lexical_ceiling

    filled = []
    for item in items:
        if not item.has_ceiling:
            record = store.load_neuron(item.neuron.layer, item.neuron.neuron)
            config = ScoreConfig(split=SplitConfig(seed=item.split_seed, **item.split), bootstrap_samples=0,
                                 polarity=Polarity(polarity))
            item = replace(item, ceiling=lexical_ceiling(record, config=config), has_ceiling=True)
        filled.append(item)
    return filled


def run_real_eval(records: str, db: str, *, simulator: str | None = None, llm: str | None = None,
                  layers: Sequence[int] = (), concurrency: int = 8, polarity: str = "positive") -> RealReport:
    """The real-neuron report for the record store at `records` from the database at `db`; with `simulator`,
    missing shuffled baselines of the scores made by that kind of simulator are computed (an LLM simulator
    needs `llm`)."""
    from neuron_explainer.activations import RecordStore

    store = RecordStore.open(records)
    manifest = store.manifest
    wanted = tuple(layers) or manifest.layers
    unknown = sorted(set(wanted) - set(manifest.layers))
    if unknown:
        raise UserError(f"layer(s) {unknown} were not recorded in {records}")
    items = fill_lexical_ceilings(load_scored_explanations(db, model_id=manifest.model_id, layers=wanted,
                                                           polarity=polarity), store, polarity=polarity)
    if simulator is not None and items:
        from neuron_explainer.llm import make_backend
        from neuron_explainer.simulate import make_simulator

        async def fill() -> list[ScoredExplanation]:
            backend = make_backend(llm) if llm else None
            try:
                return await fill_shuffled_baselines(items, store, make_simulator(simulator, backend),
                                                     concurrency=concurrency, polarity=polarity)
            finally:
                if backend is not None:
                    await backend.aclose()

        items = run_async(fill())
    return build_real_report(items, model_id=manifest.model_id, records=str(records), layers=wanted,
                             neurons_per_layer=manifest.neurons_per_layer)


def format_real_report(report: RealReport) -> str:
    """The report as text tables."""
    lines = [f"real neurons of {report.model_id} ({report.records}); layers {', '.join(map(str, report.layers))}, "
             f"{report.neurons_per_layer} neurons each"]
    for group in report.groups:
        if group.gap_neurons:
            gap = (f"gap (matched - shuffled) {number(group.gap)} = {number(group.matched_mean)} "
                   f"- {number(group.shuffled_mean)} over {group.gap_neurons} neurons")
        else:
            gap = "gap (matched - shuffled): no neuron has a shuffled baseline yet (pass --simulator to compute them)"
        lines += ["", f"{group.group}: {gap}"]
        rows = [[str(layer), str(item.count), str(item.undefined), f"{100 * group.coverage.get(layer, 0):.0f}%",
                 number(item.mean),
                 number(item.median), number(item.p10), number(item.p90),
                 number(item.fraction_above_half), number(item.mean_top), number(item.mean_random)]
                for layer, item in group.layers.items()]
        overall = group.overall
        rows.append(["all", str(overall.count), str(overall.undefined), "", number(overall.mean),
                     number(overall.median),
                     number(overall.p10), number(overall.p90), number(overall.fraction_above_half),
                     number(overall.mean_top), number(overall.mean_random)])
        lines += table(["layer", "scored", "undefined", "coverage", "mean", "median", "p10", "p90", ">=0.5",
                        "top-only", "random-only"], rows)
        if group.versus_ceiling:
            lines += ["", f"{group.group} against the lexical ceiling (means, undefined counted as 0)"]
            lines += table(["seed", "layer", "neurons", "score", "lexical ceiling", "shuffled", "score >= ceiling",
                            "verdict"],
                           [[str(seed), str(layer), str(item.neurons), number(item.score), number(item.ceiling),
                             number(item.shuffled), number(item.beats_ceiling), item.verdict]
                            for seed, layers in group.versus_ceiling.items() for layer, item in layers.items()])
    if report.agreement:
        lines += ["", "agreement between methods (Spearman across neurons)"]
        lines += table(["method", "method", "neurons", "spearman"],
                        [[item.first, item.second, str(item.neurons), number(item.spearman)]
                         for item in report.agreement])
    if report.stability:
        lines += ["", "stability (same neurons, two split seeds)"]
        lines += table(["method", "seeds", "neurons", "spearman", "mean |diff|", "same text"],
                        [[item.group, f"{item.seeds[0]} vs {item.seeds[1]}", str(item.neurons),
                          number(item.spearman), number(item.mean_absolute_difference), number(item.same_text)]
                         for item in report.stability])
    if report.notes:
        lines += [""] + [f"note: {note}" for note in report.notes]
    return "\n".join(lines)
