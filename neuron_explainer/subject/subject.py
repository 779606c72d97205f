"""A subject model ready to have its MLP neurons read: model, tokenizer, hook point and special-token policy.

Special-token policy (fixed, recorded in every store's manifest): a window is a run of text tokens. Decoders see
`[BOS] + window` when the tokenizer defines a BOS token (else just the window); encoders see
`[CLS] + window + [SEP]`. The added positions are never recorded: for a causal model the BOS position has the same
activation in every window, so it would only crowd the top-k lists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from neuron_explainer.subject.hooks import HookPoint, capture_mlp_inputs, resolve_hook_point, run_truncated
from neuron_explainer.subject.loading import LoadedModel, load_model


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids wrapped around every window before the model sees it; their positions are not recorded."""

    prefix: tuple[int, ...]
    """Ids placed before the window (BOS, or CLS for encoders)."""
    suffix: tuple[int, ...]
    """Ids placed after the window (SEP for encoders, else nothing)."""


def special_tokens_for(tokenizer: Any, *, is_encoder: bool) -> SpecialTokens:
    """The special-token policy for a tokenizer (see the module docstring)."""
    if is_encoder:
        start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        return SpecialTokens(prefix=() if start is None else (int(start),), suffix=() if end is None else (int(end),))
    bos = tokenizer.bos_token_id
    return SpecialTokens(prefix=() if bos is None else (int(bos),), suffix=())


def token_strings(tokenizer: Any) -> list[str]:
    """Display string of every token id, keeping the leading space that SentencePiece drops on a lone token."""
    anchor = tokenizer.encode("a", add_special_tokens=False)[-1:]
    base = tokenizer.decode(anchor, clean_up_tokenization_spaces=False)
    vocab_size = len(tokenizer)
    # Decoding each token after an anchor makes SentencePiece keep its word-initial space.
    paired = tokenizer.batch_decode([anchor + [index] for index in range(vocab_size)], skip_special_tokens=False,
                                    clean_up_tokenization_spaces=False)
    strings = []
    for index, text in enumerate(paired):
        if text.startswith(base):
            strings.append(text[len(base):])
        else:
            strings.append(tokenizer.decode([index], skip_special_tokens=False, clean_up_tokenization_spaces=False))
    return strings


class Subject:
    """A loaded model with its resolved hook point; turns windows of token ids into MLP neuron activations."""

    def __init__(self, loaded: LoadedModel, hook_point: HookPoint) -> None:
        self.loaded = loaded
        self.hook_point = hook_point
        self.special_tokens = special_tokens_for(loaded.tokenizer, is_encoder=loaded.is_encoder)

    @classmethod
    def load(cls, spec: str, *, device: str = "auto", dtype: str = "auto",
             hook_template: str | None = None) -> "Subject":
        """Load a model by spec (bare backbone, no LM head) and resolve its hook point."""
        loaded = load_model(spec, device=device, dtype=dtype, causal_lm=False)
        return cls(loaded, resolve_hook_point(loaded.model, hook_template=hook_template))

    @property
    def model(self) -> Any:
        """The transformers module."""
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        """The matching tokenizer."""
        return self.loaded.tokenizer

    @property
    def num_layers(self) -> int:
        """Blocks with an MLP."""
        return self.hook_point.num_layers

    @property
    def neurons_per_layer(self) -> int:
        """MLP neurons in each block."""
        return self.hook_point.neurons_per_layer

    @property
    def dtype(self) -> Any:
        """The parameters' torch dtype."""
        return next(self.model.parameters()).dtype

    def encode(self, text: str) -> list[int]:
        """Text tokens of `text` without special tokens (the policy adds them at run time)."""
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False).input_ids)

    def run(self, token_ids: Any, *, layers: Sequence[int], consume: Callable[[int, Any], None]) -> None:
        """Run equal-length windows and call `consume(layer, activations)` for each layer as soon as it is computed.

        `token_ids` is an int tensor or array [batch, positions] of text tokens. `activations` is a view
        [batch, positions, neurons] in the model's dtype on its device, covering exactly the given positions
        (special tokens stripped); it is valid after the call too. The forward pass stops after the deepest layer.
        """
        import torch

        input_ids = self._with_special_tokens(token_ids)
        start, stop = len(self.special_tokens.prefix), input_ids.shape[1] - len(self.special_tokens.suffix)

        def strip(layer: int, tensor: Any) -> None:
            consume(layer, tensor[:, start:stop])

        with torch.inference_mode():
            capture_mlp_inputs(self.model, self.hook_point, layers, lambda: self._forward(input_ids), strip)

    def activations(self, token_ids: Any, *, layers: Sequence[int]) -> dict[int, Any]:
        """MLP neuron activations of equal-length windows: {layer: tensor [batch, positions, neurons]} (see run)."""
        captured: dict[int, Any] = {}
        self.run(token_ids, layers=layers, consume=captured.__setitem__)
        return captured

    def forward_only(self, token_ids: Any, *, deepest_layer: int) -> None:
        """Run the same truncated forward pass as `activations` but capture nothing (a benchmark baseline)."""
        import torch

        input_ids = self._with_special_tokens(token_ids)
        with torch.inference_mode():
            run_truncated(self.model, self.hook_point, deepest_layer, lambda: self._forward(input_ids))

    def tokenizer_info(self) -> dict[str, Any]:
        """What a manifest records about the tokenizer and the special-token policy."""
        tokenizer = self.tokenizer
        return {
            "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
            "class": type(tokenizer).__name__,
            "vocab_size": len(tokenizer),
            "prefix_token_ids": list(self.special_tokens.prefix),
            "suffix_token_ids": list(self.special_tokens.suffix),
        }

    def _with_special_tokens(self, token_ids: Any) -> Any:
        import torch

        ids = torch.as_tensor(token_ids, dtype=torch.long)
        if ids.ndim != 2:
            raise ValueError(f"expected token ids [batch, positions], got shape {tuple(ids.shape)}")
        batch = ids.shape[0]
        pieces = []
        if self.special_tokens.prefix:
            pieces.append(torch.tensor(self.special_tokens.prefix, dtype=torch.long).expand(batch, -1))
        pieces.append(ids)
        if self.special_tokens.suffix:
            pieces.append(torch.tensor(self.special_tokens.suffix, dtype=torch.long).expand(batch, -1))
        return torch.cat(pieces, dim=1).to(self.loaded.device)

    def _forward(self, input_ids: Any) -> Any:
        if self.loaded.is_encoder:
            return self.model(input_ids=input_ids)
        return self.model(input_ids=input_ids, use_cache=False)
