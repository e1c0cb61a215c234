"""`python -m ekg_jax.export_onnx WORKDIR/export`: `model.onnx` beside an
exported network (the work is `ekg_jax.deploy.export_onnx`'s; the optional
[onnx] extra)."""

import sys

from ekg_jax.deploy.export_onnx import main

if __name__ == '__main__':
  main(sys.argv)
