"""The run (the top layer): what `python -m ekg_jax.main` drives.

- `validate`: the whole-config check, before any data is read;
- `preflight`: the data and files a run needs, checked up front;
- `workdir`: a run's folder, config pinning, resume, a redo's removal;
- `phases`: pretrain, evaluate, search, landscape, memory bank, fine-tune,
  export, each `(Setup) -> summary`, and `PHASES`, one record per phase
  (what it pins, writes, reads and how it runs) that the others read;
- `report`, `plots`: the final table and PNG plots.

`ekg_jax.config` (the config files' defaults), `ekg_jax.pipeline` and
`ekg_jax.main` sit beside this package in the same layer.
"""
