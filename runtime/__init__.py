"""The device runtime: artifact, tokenizer, exit policies, residency cache, runner, backend interface.

Imports nothing from the offline side (``nanotrt.pipeline``, ``nanotrt.calibration``) and never torch,
transformers, onnx or polygraphy; ``tests/test_packaging.py`` enforces it.
"""
