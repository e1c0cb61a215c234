"""Deployment of the slimmed network: `export` (a `jax.export` artifact with
its preprocessing) and `export_onnx` (ONNX through jax2onnx, the optional
[onnx] extra).

Imports the core and the foundation only.
"""
