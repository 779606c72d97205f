"""The planted "recording": real corpus windows, planted activations, written by the recorder's own store writer.

`build_planted_store` cuts the corpus into windows with a real tokenizer (the default model's unless told
otherwise), computes every planted neuron's activation at every token, and hands windows and activations to
`activations.record_activations`, so top-k windows, the random sample and the statistics follow exactly the
recorder's rules and the result is an ordinary record store (model id `planted:<suite>`, layer 0, neuron i =
the suite's i-th neuron). The store is reused when suite, tokenizer, corpus and settings are unchanged.

`PlantedSubject` answers the few questions SASC asks a subject model (tokenise a text, give its activations),
so SASC's synthetic scoring runs against the planted rules themselves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuron_explainer.core.errors import UserError
from neuron_explainer.core.paths import cache_dir
from neuron_explainer.eval.rules import planted_activations
from neuron_explainer.eval.suite import PlantedSuite

logger = logging.getLogger(__name__)

PLANTED_LAYER = 0
"""Planted neurons live in layer 0 of their store."""
HOOK_POINT = "planted"
"""The manifest's hook point for planted stores."""
EXTRA_KEY = "planted"
"""Key of the planted-suite description in the manifest's `extra`."""


@dataclass(frozen=True)
class PlantedRecordingConfig:
    """How the planted recording is made."""

    tokenizer: str = "default"
    """Model spec whose tokenizer cuts the windows (`default`, an HF id or a local directory)."""
    corpus: str = "python-docs"
    """Corpus spec."""
    windows: int = 10_000
    """Most windows (python-docs yields about 9,900 windows of 64 default-model tokens)."""
    window_length: int = 64
    """Tokens per window."""
    top_k: int = 40
    """Top windows kept per neuron."""
    random_k: int = 100
    """Shared random windows."""
    seed: int = 0
    """Seed of the random-window sample."""

    def __post_init__(self) -> None:
        for name in ("windows", "window_length", "top_k", "random_k"):
            if getattr(self, name) < 1:
                raise UserError(f"planted recording: {name.replace('_', ' ')} must be at least 1")


@dataclass(frozen=True)
class PlantedStore:
    """A planted record store on disk."""

    path: Path
    """The store directory."""
    suite: PlantedSuite
    """The suite it holds."""
    identity: str
    """Hash of suite, tokenizer, corpus and settings; a store with the same identity is reused."""
    reused: bool
    """True when an existing store was reused."""
    seconds: float
    """Time spent building (or finding) it."""


def load_tokenizer(spec: str) -> Any:
    """The tokenizer of a model spec, without loading the model's weights (GGUF files are converted once)."""
    from transformers import AutoTokenizer

    from neuron_explainer.subject.loading import model_directory

    _, location = model_directory(spec)
    try:
        return AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the tokenizer of {spec!r}: {str(exc).splitlines()[0] if str(exc) else exc}"
                        ) from None


def _vocab_hash(vocab: list[str]) -> str:
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def build_planted_store(suite: PlantedSuite, config: PlantedRecordingConfig = PlantedRecordingConfig(), *,
                        out_dir: Path | str | None = None, tokenizer: Any = None,
                        progress: bool = False) -> PlantedStore:
    """Write (or reuse) the record store of `suite` over real corpus windows.

    `out_dir` defaults to a directory under the cache named by the store's identity. `tokenizer` may pass an
    already loaded tokenizer for `config.tokenizer`.
    """
    from neuron_explainer.activations import RecordStore, record_activations
    from neuron_explainer.corpus import document_batches, open_corpus
    from neuron_explainer.subject.subject import token_strings

    started = time.perf_counter()
    corpus = open_corpus(config.corpus)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.tokenizer)
    vocab = token_strings(tokenizer)
    identity_source = {"suite": suite.content_hash, "config": asdict(config), "vocab": _vocab_hash(vocab),
                       "corpus": corpus.content_hash, "document_ids": True}
    identity = hashlib.sha256(json.dumps(identity_source, sort_keys=True).encode()).hexdigest()[:24]
    target = Path(out_dir) if out_dir is not None else cache_dir() / "planted" / f"{suite.name}-{identity}"
    existing = _existing_identity(target)
    if existing == identity:
        logger.info("reusing the planted record store at %s", target)
        return PlantedStore(path=target, suite=suite, identity=identity, reused=True,
                            seconds=time.perf_counter() - started)

    batches = list(document_batches(corpus.documents(), tokenizer, length=config.window_length,
                                    max_windows=config.windows, batch_size=1024))
    if not batches:
        raise UserError(f"corpus {config.corpus!r} yields no window of {config.window_length} tokens")
    token_ids = np.concatenate([tokens for tokens, _ in batches])
    documents = np.concatenate([rows for _, rows in batches])
    logger.info("computing %d planted neurons on %d windows", len(suite.neurons), len(token_ids))
    activations = planted_activations(suite, token_ids, vocab)
    extra = {EXTRA_KEY: {"identity": identity, "suite": suite.as_dict(), "suite_hash": suite.content_hash,
                         "tokenizer": config.tokenizer, "source": suite.source}}
    path = record_activations(
        target, token_ids=token_ids, vocab=vocab, activations={PLANTED_LAYER: activations}, top_k=config.top_k,
        random_k=config.random_k, seed=config.seed, model_id=suite.model_id, model_fingerprint=suite.content_hash,
        hook_point=HOOK_POINT, corpus_spec=config.corpus, extra=extra, documents=documents)
    # The recorder's manifest shows what was recorded; check the store reads back as one before using it.
    RecordStore.open(path)
    return PlantedStore(path=path, suite=suite, identity=identity, reused=False,
                        seconds=time.perf_counter() - started)


def _existing_identity(target: Path) -> str | None:
    from neuron_explainer.activations import RecordStore

    if not (target / "manifest.json").is_file():
        return None
    try:
        manifest = RecordStore.open(target).manifest
    except UserError:
        return None
    planted = manifest.extra.get(EXTRA_KEY)
    return planted.get("identity") if isinstance(planted, dict) else None


@dataclass(frozen=True)
class PlantedModelIdentity:
    """The `loaded` part of a subject that caches key on."""

    model_id: str
    """`planted:<suite>`."""
    fingerprint: str
    """Hash of the suite's content and the tokenizer's vocabulary."""


class PlantedSubject:
    """Stands in for `subject.Subject` where SASC reads neuron responses (`encode`, `activations`, `tokenizer`,
    `special_tokens`, `model`, `loaded`, `dtype`, `neurons_per_layer`): the planted rules applied to the tokens of
    any text, so synthetic texts and isolated n-grams are scored against the true concept."""

    def __init__(self, suite: PlantedSuite, tokenizer: Any) -> None:
        from neuron_explainer.subject.subject import SpecialTokens, token_strings

        self.suite = suite
        self.tokenizer = tokenizer
        self.vocab = token_strings(tokenizer)
        # SASC keys a per-model lock on this attribute; the planted rules are their own "model".
        self.model = self
        # Planted rules read the text tokens only: nothing is wrapped around them.
        self.special_tokens = SpecialTokens(prefix=(), suffix=())
        # The n-gram response cache is keyed by model id and fingerprint: suite content and tokenizer together.
        fingerprint = hashlib.sha256(f"{suite.content_hash}:{_vocab_hash(self.vocab)}".encode()).hexdigest()
        self.loaded = PlantedModelIdentity(model_id=suite.model_id, fingerprint=fingerprint)

    @property
    def num_layers(self) -> int:
        """Planted stores have one layer."""
        return PLANTED_LAYER + 1

    @property
    def neurons_per_layer(self) -> int:
        """One neuron per planted concept."""
        return len(self.suite.neurons)

    @property
    def dtype(self) -> Any:
        """Activations are float32."""
        import torch

        return torch.float32

    def encode(self, text: str) -> list[int]:
        """Text tokens of `text`, no special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False).input_ids)

    def activations(self, token_ids: Any, *, layers: Any) -> dict[int, Any]:
        """{0: tensor [batch, positions, neurons]} of equal-length token windows."""
        import torch

        ids = np.asarray(token_ids.cpu() if hasattr(token_ids, "cpu") else token_ids, dtype=np.int64)
        unknown = sorted(set(layers) - {PLANTED_LAYER})
        if unknown:
            raise UserError(f"planted stores have only layer {PLANTED_LAYER}; asked for {unknown}")
        key = hashlib.sha256(ids.tobytes()).hexdigest()[:16]
        return {PLANTED_LAYER: torch.from_numpy(planted_activations(self.suite, ids, self.vocab, noise_key=key))}
