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
    assert config.ngram_mode is NgramMode.ISOLATED and config.explainers == ("ngram",) and config.seed == 5
    assert config.max_cost == 2.0
    assert RunConfig.model_validate(config.as_dict()) == config


def test_split_seed_splits_anew_without_recording_anew():
    base = RunConfig(seed=3)
    resplit = RunConfig(seed=3, split_seed=7)
    assert base.split.seed == 3 and resplit.split.seed == 7
    assert recording_directory(base) == recording_directory(resplit)
    assert recording_directory(RunConfig(seed=4)) != recording_directory(base)
    defaults = SplitConfig()
    assert (base.explain_windows, base.score_top_windows, base.score_random_windows) == (
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
