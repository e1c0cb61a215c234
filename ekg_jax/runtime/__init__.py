"""The machine (foundation layer): `backend` (what each backend does best),
`distributed` (devices, hosts and the data mesh), `xla_config` (XLA flags set
before JAX starts) and `breakdown` (where a phase's wall-clock goes)."""
