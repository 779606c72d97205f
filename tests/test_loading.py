"""Loading subject models: tiny random-init models of four families load, and a bad model spec is one UserError."""

import pytest

from neuron_explainer.core.errors import UserError
from neuron_explainer.subject.loading import load_model, parse_model_spec


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "bert"])
def test_tiny_models_load(tiny_model_factory, family):
    loaded = load_model(str(tiny_model_factory(family)))
    assert loaded.is_encoder == (family == "bert")
    assert loaded.fingerprint not in ("", "unknown")
    assert loaded.tokenizer("hello world").input_ids


def test_bad_model_is_user_error(tmp_path):
    with pytest.raises(UserError):
        load_model(str(tmp_path / "no-such-model"))
    with pytest.raises(UserError):
        parse_model_spec(str(tmp_path / "missing.gguf"))
