"""Files (foundation layer): `checkpoint` (orbax checkpoints, atomic JSON
and npz), `official` (the authors' weights, read without unpickling) and
`cache` (the compilation cache and decoded datasets)."""
