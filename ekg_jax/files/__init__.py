"""Files (foundation layer): `checkpoint` (orbax checkpoints, atomic JSON,
the authors' weights read without unpickling) and `cache` (the compilation
cache and decoded datasets)."""
