"""A longer fault soak on the loopback OpenAI server: the tests/fault machinery, cycle after cycle, until time is up.

Each cycle runs a night over planted neurons against a server that fails `--rate` of requests in every way the
fault suite knows (429s with and without Retry-After, 5xx, resets, hangs, malformed and truncated bodies, empty,
misaligned, non-numeric and 10,000-character answers), checks the guarantees of docs/guarantees.md (every neuron
ends with a score or a stored failure, nothing duplicated, the ledger equals the server's billable answers,
integrity ok), fills the failures in with the faults off (`--retry-failed`), then SIGKILLs a forked run at a
random moment and resumes it, comparing the result with the clean run. Loopback only; stops by itself.

    .venv/bin/python scripts/soak.py --minutes 30 [--neurons 200] [--rate 0.3] [--seed 0]

Prints one line per cycle and a final JSON line {"soak": ...}; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from fake_openai_server import FakeOpenAIServer  # noqa: E402
from fault_harness import (ANSWER_FAULTS, FAST_OPTIONS, TRANSIENT_FAULTS, FaultMix, TimeoutCounter,  # noqa: E402
                           integrity, results_snapshot, rows, word_store)
from scripted_llm import competent_model  # noqa: E402

from neuron_explainer.pipeline import RunConfig, run_pipeline  # noqa: E402


def _config(store: Path, db: Path, spec: str, **overrides: object) -> RunConfig:
    values: dict[str, object] = dict(db=f"sqlite:///{db}", records=str(store), explainers=("token-pairs",),
                                     simulator="generated", llm=spec, concurrency=16, score_top_windows=2,
                                     score_random_windows=2, explain_windows=6)
    values.update(overrides)
    return RunConfig(**values)  # type: ignore[arg-type]


def _forked_run(config: RunConfig) -> None:
    try:
        run_pipeline(config, progress=False)
    finally:
        os._exit(0)


def _check(problems: list[str], condition: bool, message: str) -> None:
    if not condition:
        problems.append(message)


def cycle(number: int, store: Path, neurons: int, work: Path, rate: float, seed: int, minutes_left: float,
          reference: dict[str, list[tuple]] | None) -> tuple[dict[str, object], dict[str, list[tuple]] | None]:
    """One night with faults, its checks, the retry run, and one kill-and-resume; returns figures and the
    snapshot of a night without faults (made in the first cycle). A faulted night itself differs from a clean one
    where answers were unusable: those windows are reported in its scores, never filled in."""
    problems: list[str] = []
    kills = 0
    db = work / f"night-{number}.db"
    mix = FaultMix({**TRANSIENT_FAULTS, **ANSWER_FAULTS}, rate=rate, seed=seed + number)
    counter = TimeoutCounter()
    logging.getLogger("neuron_explainer").addHandler(counter)
    started = time.monotonic()
    try:
        with FakeOpenAIServer(responder=competent_model) as server:
            server.fault_policy = mix
            spec = server.backend_spec("competent", FAST_OPTIONS)
            first = run_pipeline(_config(store, db, spec, max_minutes=max(minutes_left, 0.1)), progress=False)
            scored = set(rows(db, "select n.neuron from scores s join neurons n on n.id = s.neuron_id"))
            failed = set(rows(db, "select neuron from failures"))
            for table, key in (("explanations", "neuron_id, config_key"), ("scores", "explanation_id, config_key")):
                duplicates = rows(db, f"select count(*) from (select {key} from {table} group by {key} "
                                      "having count(*) > 1)")[0][0]
                _check(problems, duplicates == 0, f"{duplicates} duplicated {table}")
            _check(problems, not scored & failed, "a neuron has both a score and a failure")
            if first.status == "completed":
                _check(problems, len(scored | failed) == neurons, f"{neurons - len(scored | failed)} neurons lost")
            ledger = rows(db, "select count(*) from llm_calls where not from_cache")[0][0]
            late = counter.timeouts - mix.injected["hang past timeout"]
            _check(problems, ledger <= server.answered <= ledger + max(late, 0),
                   f"ledger {ledger} calls, server answered {server.answered} (late answers {late})")
            requests, injected = server.count(), sum(mix.injected.values())
            if first.status == "completed":
                mix.enabled = False
                retry = run_pipeline(_config(store, db, spec, retry_failed=True), progress=False)
                _check(problems, retry.done == len(failed), f"retry redid {retry.done}, {len(failed)} had failed")
                _check(problems, len(results_snapshot(db)["scores"]) == neurons, "the retry left neurons unscored")
                if reference is None:
                    # A night without faults: what every killed-and-resumed night must equal.
                    clean = work / "clean.db"
                    run_pipeline(_config(store, clean, spec), progress=False)
                    reference = results_snapshot(clean)
                killed = work / f"killed-{number}.db"
                config = _config(store, killed, spec)
                process = multiprocessing.get_context("fork").Process(target=_forked_run, args=(config,))
                rng = random.Random(seed * 1000 + number)
                server.reset()
                threshold = rng.randint(10, max(11, requests // 3))
                process.start()
                while process.is_alive() and server.count() < threshold:
                    time.sleep(0.002)
                if process.is_alive():
                    os.kill(process.pid, signal.SIGKILL)
                process.join()
                kills += process.exitcode == -signal.SIGKILL
                resumed = run_pipeline(config, progress=False)
                _check(problems, resumed.status == "completed", f"resume ended {resumed.status}")
                _check(problems, results_snapshot(killed) == reference, "the resumed night differs from a clean one")
                _check(problems, integrity(killed) == [("ok",)], "integrity check of the resumed database failed")
            _check(problems, integrity(db) == [("ok",)], "integrity check failed")
    finally:
        logging.getLogger("neuron_explainer").removeHandler(counter)
    return ({"cycle": number, "status": first.status, "requests": requests, "faults": injected,
             "failed_then_filled": len(failed), "killed_and_resumed": kills, "seconds": round(time.monotonic() - started, 1),
             "problems": problems}, reference)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help="stop starting new cycles after this long")
    parser.add_argument("--neurons", type=int, default=200, help="planted neurons per night (default 200)")
    parser.add_argument("--rate", type=float, default=0.3, help="share of requests that fail (default 0.3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault draws and kill moments")
    args = parser.parse_args()
    if not 0 < args.minutes <= 24 * 60 or not 0 <= args.rate < 1 or args.neurons < 1:
        parser.error("need 0 < --minutes <= 1440, 0 <= --rate < 1 and --neurons >= 1")
    os.environ.setdefault("NEURON_EXPLAINER_CACHE", tempfile.mkdtemp(prefix="soak-cache-"))
    deadline = time.monotonic() + args.minutes * 60
    totals = {"cycles": 0, "requests": 0, "faults": 0, "problems": 0}
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        work = Path(scratch)
        store = word_store(work, neurons=args.neurons)
        reference = None
        number = 0
        while time.monotonic() < deadline:
            figures, reference = cycle(number, store, args.neurons, work, args.rate, args.seed,
                                       (deadline - time.monotonic()) / 60, reference)
            print(json.dumps(figures), flush=True)
            totals["cycles"] += 1
            totals["requests"] += int(figures["requests"])  # type: ignore[arg-type]
            totals["faults"] += int(figures["faults"])  # type: ignore[arg-type]
            totals["problems"] += len(figures["problems"])  # type: ignore[arg-type]
            for path in work.glob(f"*-{number}.db*"):
                path.unlink()
            number += 1
    print(json.dumps({"soak": "faults", "minutes": args.minutes, "neurons": args.neurons, "rate": args.rate,
                      **totals}))
    return 1 if totals["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
