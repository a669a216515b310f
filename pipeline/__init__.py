"""nanotrt: BERT-family classifiers cut into per-layer engines, streamed under a memory budget with early exit.

The device-side path (``pipeline.runner``, ``pipeline.tokenize``, ``engines.onnxruntime``) imports neither
torch nor transformers; training/export modules do.
"""

__version__ = "0.1.0"
