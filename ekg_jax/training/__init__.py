"""Training: pretraining, and fine-tuning the slimmed network with the memory
bank's knowledge (ekg_algorithm.md section 6), data-parallel over devices.

- `steps`: one compiled train step (`shard_map` over the `data` mesh axis,
  the step runner);
- `optimizers`: optimizers and learning-rate schedules by name (a recipe's
  `optimizer`, `lr_schedule`, warm-up, clipping);
- `loop`: the epoch loop, checkpoints, metrics and resume;
- `distill`: the training objective with or without teachers, and its views;
- `losses`: cross-entropy and the distillation losses;
- `feeds`, `input_pipeline`: batches for the loop, from memory or streamed;
- `evaluation`: accuracy of a network on a split;
- `metrics`: running metrics written as JSON and TensorBoard.

Imports the knowledge, core and foundation layers; never the search or the
run.
"""
