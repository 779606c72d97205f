"""corpus stage: text sources -> documents -> fixed-length windows of token ids.

Public surface: `open_corpus(spec, *, text_field) -> Corpus` (validated, content-hashed; `.documents()`),
`iter_windows` / `window_batches` / `document_batches` (the windowing policy; the last also gives each
window's document id and position), `PYTHON_DOCS` (the offline default spec).
"""

from neuron_explainer.corpus.python_docs import PYTHON_DOCS
from neuron_explainer.corpus.sources import Corpus, SourceFile, SourceFormat, open_corpus
from neuron_explainer.corpus.windows import (DocumentWindow, document_batches, iter_document_windows, iter_windows,
                                             window_batches)

__all__ = ["PYTHON_DOCS", "Corpus", "DocumentWindow", "SourceFile", "SourceFormat", "document_batches",
           "iter_document_windows", "iter_windows", "open_corpus", "window_batches"]
