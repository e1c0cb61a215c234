"""The supernet: the gate protocol and what it drives (the core layer).

A model's prunable channel groups are gates; a sub-network is a pytree of
channel masks over one set of weights (ekg_algorithm.md section 2).

- `gates`: the gated layers (conv, dense, batch norm) and the masks;
- `attention`: gated multi-head attention (a gate over heads), LayerNorm
  and token embedding, for transformers;
- `protocol`: how each gated layer describes itself (`GateSpec`,
  `LayerSpec`) and the layer table one trace collects;
- `model`: `Supernet`, the base class every model family subclasses;
- `flops`: FLOPs and parameter counts of any sub-network, from the table;
- `slimming`: the masked network made physically smaller;
- `ops`: the convolution the gated layers run.

Imports the foundation (data, files, runtime, rules) only, never the method
(search, training, knowledge, deploy) or the run.
"""
