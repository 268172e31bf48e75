"""Exporting a model to ONNX/int8 with an accuracy gate: a job above both models and evaluate.

`gate` measures an export against its source (zero-shot top-1, image cosines); `runtimes.load_runtime`
loads a model under any runtime, exporting it (behind the gate for int8) when needed.
"""

from vlmops.export.runtimes import load_runtime

__all__ = ["load_runtime"]
