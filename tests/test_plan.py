"""`run --plan`: projections from templates and from the ledger, checked against a real run on the loopback server."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from neuron_explainer.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer  # noqa: E402
from scripted_llm import competent_model  # noqa: E402
from test_scoring_llm import _planted_store  # noqa: E402

WORDS = ("the", "of", "and", "to", "a", "in", "is", "for")


def _plan(capsys: pytest.CaptureFixture[str], arguments: list[str]) -> dict:
    capsys.readouterr()
    assert main(["run", *arguments, "--plan", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_from_templates_spends_nothing_and_writes_nothing(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "llama-8b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "vocab_size": 128256}))
    db = tmp_path / "n.db"
    plan = _plan(capsys, ["--model", str(model), "--db", f"sqlite:///{db}", "--llm", "openai:gpt-4o-mini",
                          "--scorer", "simulation,detection,fuzzing", "--rpm", "5000"])
    assert plan["neurons"] == 458_752 and not db.exists() and not (tmp_path / "records").exists()
    stages = {stage["figures"]["stage"]: stage for stage in plan["stages"]}
    assert set(stages) == {"explain:token-pairs", "simulate:generated", "score:detection", "score:fuzzing"}
    assert all(stage["figures"]["source"] == "templates" for stage in stages.values())
    # Detection and fuzzing batch passages: a fraction of the generated simulator's requests and tokens.
    assert stages["score:detection"]["requests"] * 10 < stages["simulate:generated"]["requests"]
    assert stages["score:fuzzing"]["prompt_tokens"] * 4 < stages["simulate:generated"]["prompt_tokens"]
    assert plan["cost_batch_usd"] == pytest.approx(plan["cost_usd"] / 2)
    assert plan["hours"] > 0 and plan["requests"] == sum(stage["requests"] for stage in stages.values())


def test_plan_from_the_ledger_is_within_ten_percent_of_the_next_run(fake_openai: FakeOpenAIServer, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    fake_openai.responder = competent_model
    records = _planted_store(tmp_path, WORDS)
    db = tmp_path / "n.db"
    common = ["--records", str(records), "--db", f"sqlite:///{db}", "--explainer", "token-pairs",
              "--llm", fake_openai.backend_spec("gpt-4o-mini"), "--simulator", "generated",
              "--scorer", "simulation,detection,fuzzing"]
    assert main(["run", *common, "--neurons", "0:0-3", "--json"]) == 0
    plan = _plan(capsys, [*common, "--neurons", "0:4-7"])
    assert plan["neurons"] == 4
    assert {stage["figures"]["source"] for stage in plan["stages"]} == {"ledger (4 neurons)"}
    fake_openai.reset()
    assert main(["run", *common, "--neurons", "0:4-7", "--json"]) == 0
    with sqlite3.connect(db) as connection:
        run_id = connection.execute("SELECT MAX(id) FROM runs").fetchone()[0]
        requests, prompt, completion, cost = connection.execute(
            "SELECT COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd) FROM llm_calls "
            "WHERE run_id = ? AND NOT from_cache", (run_id,)).fetchone()
    assert requests == fake_openai.answered
    assert plan["requests"] == pytest.approx(requests, rel=0.10)
    assert plan["prompt_tokens"] == pytest.approx(prompt, rel=0.10)
    assert plan["completion_tokens"] == pytest.approx(completion, rel=0.10)
    assert plan["cost_usd"] == pytest.approx(cost, rel=0.10)


def test_nightly_refuses_a_night_over_its_cap(tmp_path: Path) -> None:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    if not (root / ".venv" / "bin" / "neuron-explainer").exists():
        pytest.skip("scripts/nightly.sh runs the CLI installed in .venv")
    model = tmp_path / "llama-8b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "intermediate_size": 14336,
                                                   "num_hidden_layers": 32}))
    config = tmp_path / "night.toml"
    config.write_text(f'db = "sqlite:///{tmp_path / "night.db"}"\nmodel = "{model}"\nllm = "openai:gpt-4o-mini"\n'
                      'simulator = "generated"\n')
    done = subprocess.run(["bash", str(root / "scripts" / "nightly.sh"), str(config)], capture_output=True, text=True,
                          env={**os.environ, "NIGHT_CAP_USD": "40"}, timeout=300)
    assert done.returncode == 3 and "refused: the plan projects $" in done.stderr
    assert not (tmp_path / "night.db").exists()
