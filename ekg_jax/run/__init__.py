"""The run (the top layer): what `python -m ekg_jax.main` drives.

- `validate`: the whole-config check, before any data is read;
- `preflight`: the data and files a run needs, checked up front;
- `workdir`: a run's folder, the config keys each phase pins, resume;
- `phases`: pretrain, evaluate, search, landscape, memory bank, fine-tune,
  export, each `(Setup) -> summary`;
- `report`, `plots`: the final table and PNG plots.

`ekg_jax.config` (the config files' defaults), `ekg_jax.pipeline` and
`ekg_jax.main` sit beside this package in the same layer.
"""
