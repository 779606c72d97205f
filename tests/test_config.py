"""The typed run configuration: TOML, flags and the stored config are one model; bad keys and types are one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuron_explainer.cli import main
from neuron_explainer.core.database_url import normalise_database_url
from neuron_explainer.core.errors import UserError
from neuron_explainer.explain import NgramMode, SplitConfig
from neuron_explainer.llm.cache import default_cache_path
from neuron_explainer.pipeline import RunConfig, load_config, recording_directory


def _toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "run.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(("text", "key"), [
    ('baselines = "no"', "baselines"), ('seed = "3"', "seed"), ("concurrency = 2.5", "concurrency"),
    ("explainers = 3", "explainers"), ('ngram_mode = "sideways"', "ngram_mode")])
def test_wrong_types_in_toml_are_one_line_naming_key_and_file(tmp_path, text, key):
    path = _toml(tmp_path, text)
    with pytest.raises(UserError) as caught:
        load_config(path, {})
    message = str(caught.value)
    assert f"'{key}'" in message and path in message and "\n" not in message


def test_unknown_keys_and_flag_values_are_named(tmp_path):
    path = _toml(tmp_path, "modle = 'x'")
    with pytest.raises(UserError, match=f"unknown config key 'modle' in {path}"):
        load_config(path, {})
    with pytest.raises(UserError, match="--max-cost must not be negative"):
        load_config(None, {"max_cost": -1.0})
    with pytest.raises(UserError, match="config key 'concurrency'"):
        RunConfig(concurrency="8")


def test_toml_sets_ngram_mode_and_dashes_read_as_underscores_and_flags_win(tmp_path):
    path = _toml(tmp_path, 'ngram-mode = "isolated"\nexplainers = ["sasc", "ngram"]\nseed = 4\nmax_cost = 2')
    config = load_config(path, {"seed": 5, "explainers": "ngram"})
    assert config.explain.ngram_mode is NgramMode.ISOLATED and config.explain.explainers == ("ngram",)
    assert config.record.seed == 5 and config.budget.max_cost == 2.0
    assert RunConfig.model_validate(config.as_dict()) == config


def test_split_seed_splits_anew_without_recording_anew():
    base = RunConfig(seed=3)
    resplit = RunConfig(seed=3, split_seed=7)
    assert base.split_config.seed == 3 and resplit.split_config.seed == 7
    assert recording_directory(base) == recording_directory(resplit)
    assert recording_directory(RunConfig(seed=4)) != recording_directory(base)
    defaults = SplitConfig()
    assert (base.split.explain_windows, base.split.score_top_windows, base.split.score_random_windows) == (
        defaults.explain_top, defaults.score_top, defaults.score_random)


def test_a_plain_database_path_is_a_sqlite_url_and_keeps_its_llm_cache_beside_it():
    assert normalise_database_url(" neurons.db ") == "sqlite:///neurons.db"
    assert normalise_database_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert default_cache_path("neurons.db") == default_cache_path("sqlite:///neurons.db") == Path(
        "neurons.db.llm-cache.sqlite")


def test_the_run_command_reports_a_bad_toml_value_in_one_line(tmp_path, capsys):
    path = _toml(tmp_path, 'baselines = "no"')
    assert main(["run", "--config", path, "--db", f"sqlite:///{tmp_path / 'new.db'}"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "'baselines'" in error and path in error
    assert not (tmp_path / "new.db").exists()


NESTED = '''
[run]
db = "sqlite:///n.db"
concurrency = 2

[record]
seed = 4
top-k = 12

[split]
seed = 9
groups = "documents"

[explain]
explainers = ["token-pairs", "lexicon"]

[llm]
backend = "openai:gpt-4o-mini"
simulator_backend = "local:default"

[budget]
max_cost = 1.5
'''


def test_a_nested_toml_file_is_read_by_section_and_flags_still_win(tmp_path, caplog):
    path = _toml(tmp_path, NESTED)
    config = load_config(path, {"concurrency": 4, "split_seed": None, "llm": "local:default"})
    assert (config.run.db, config.run.concurrency) == ("sqlite:///n.db", 4)
    assert (config.record.seed, config.record.top_k) == (4, 12)
    assert config.split_config.seed == 9 and config.split.groups == "documents"
    assert config.explain.explainers == ("token-pairs", "lexicon")
    assert (config.llm.backend, config.llm.simulator_backend) == ("local:default", "local:default")
    assert config.budget.max_cost == 1.5
    assert "deprecated" not in caplog.text
    assert RunConfig.model_validate(config.as_dict()) == config
    assert config.as_dict()["record"]["top_k"] == 12


@pytest.mark.parametrize(("text", "key"), [
    ('[record]\nseed = "3"', "record.seed"), ("[run]\nconcurrency = 2.5", "run.concurrency"),
    ("[budget]\nmax_cost = -1", "budget.max_cost"), ('[split]\ngroups = "pages"', "split.groups"),
    ('[llm]\nbackend = 3', "llm.backend")])
def test_wrong_types_in_sections_name_the_dotted_key_and_the_file(tmp_path, text, key):
    path = _toml(tmp_path, text)
    with pytest.raises(UserError) as caught:
        load_config(path, {})
    message = str(caught.value)
    assert f"config key '{key}' in {path}" in message and "\n" not in message


def test_unknown_keys_and_tables_are_named_by_dotted_path(tmp_path):
    path = _toml(tmp_path, "[record]\nmodle = 'x'")
    with pytest.raises(UserError, match=f"unknown config key 'record.modle' in {path}"):
        load_config(path, {})
    path = _toml(tmp_path, "[recrod]\nmodel = 'x'")
    with pytest.raises(UserError, match=f"unknown config key 'recrod' in {path}"):
        load_config(path, {})
    path = _toml(tmp_path, "record = 3")
    with pytest.raises(UserError, match=f"config key 'record' in {path}"):
        load_config(path, {})


def test_flat_keys_of_old_files_still_load_with_one_deprecation_line(tmp_path, caplog):
    path = _toml(tmp_path, 'seed = 4\nllm = "openai:gpt-4o-mini"\n[score]\nbaselines = true\n')
    with caplog.at_level("WARNING", logger="neuron_explainer.pipeline.config"):
        config = load_config(path, {})
    assert config.record.seed == 4 and config.llm.backend == "openai:gpt-4o-mini" and config.score.baselines
    notes = [record.getMessage() for record in caplog.records]
    assert len(notes) == 1 and "\n" not in notes[0] and path in notes[0]
    assert "seed -> [record] seed" in notes[0] and "llm -> [llm] backend" in notes[0]


def test_every_flag_maps_to_one_section_key():
    from neuron_explainer.pipeline import config_flags

    flags = config_flags()
    assert flags["split_seed"].path == "split.seed" and flags["llm"].path == "llm.backend"
    assert flags["top_k"].option == "--top-k"
    assert len({flag.path for flag in flags.values()}) == len(flags)


def test_a_stored_flat_config_of_an_old_database_loads_and_shows_in_runs(tmp_path, capsys):
    from neuron_explainer.db import open_database

    flat = {"db": "sqlite:///old.db", "model": "default", "seed": 2, "split_seed": None, "neurons": "0:1-3",
            "sample": 2, "explainers": ["token-pairs"], "ngram_mode": "in-context", "simulator": "generated",
            "scorers": ["simulation"], "llm": "openai:gpt-4o-mini@http://127.0.0.1:9/v1", "max_cost": 3.0}
    config = RunConfig.model_validate(flat)
    assert config.record.seed == 2 and config.explain.sample == 2 and config.llm.backend.startswith("openai:")
    url = f"sqlite:///{tmp_path / 'old.db'}"
    with open_database(url) as database:
        database.finish_run(database.start_run(config=flat), "completed", totals={})
        database.finish_run(database.start_run(config=config.as_dict()), "completed", totals={})
    assert main(["runs", "--db", url]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "neurons 0:1-3" in line]
    assert len(lines) == 2
    assert all("sample 2" in line and "token-pairs" in line and "openai:gpt-4o-mini" in line for line in lines)


def test_the_run_command_names_a_bad_nested_key_by_its_dotted_path(tmp_path, capsys):
    path = _toml(tmp_path, '[score]\nbaselines = "no"\n')
    assert main(["run", "--config", path, "--db", f"sqlite:///{tmp_path / 'new.db'}"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "config key 'score.baselines' in " + path in error
    assert not (tmp_path / "new.db").exists()
