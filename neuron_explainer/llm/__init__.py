"""llm stage: every explainer and simulator talks to LLMs through `LLMBackend`, built by `make_backend` from the
`BACKENDS` registry."""

from neuron_explainer.llm.base import (
    Capabilities,
    GenerateResult,
    Generation,
    LLMBackend,
    Message,
    Prompt,
    SlotPrompt,
    TokenLogprob,
    Usage,
)
from neuron_explainer.llm.cache import CacheMode, ResponseCache, default_cache_path
from neuron_explainer.llm.errors import LLMError, LLMFatalError, LLMTransientError
from neuron_explainer.llm.factory import (BACKENDS, BackendEntry, BackendKind, BackendSpec, check_backend, make_backend,
                                         parse_backend_spec)
from neuron_explainer.llm.ledger import LedgerEntry, ModelPrice, PriceTable, UsageLedger, UsageTotals, usage_scope
from neuron_explainer.llm.limits import RateLimits
from neuron_explainer.llm.openai_backend import OpenAIBackend, OpenAISettings, SlotMode
from neuron_explainer.llm.retry import RetryPolicy

__all__ = [
    "BACKENDS", "BackendEntry", "BackendKind", "BackendSpec", "CacheMode", "Capabilities", "GenerateResult", "Generation", "LLMBackend",
    "LLMError", "LLMFatalError", "LLMTransientError", "LedgerEntry", "Message", "ModelPrice", "OpenAIBackend",
    "OpenAISettings", "PriceTable", "Prompt", "RateLimits", "ResponseCache", "RetryPolicy", "SlotMode", "SlotPrompt",
    "TokenLogprob", "Usage", "UsageLedger", "UsageTotals", "check_backend", "default_cache_path", "make_backend",
    "parse_backend_spec", "usage_scope",
]
