"""`python -m ekg_jax.prepare cifar10 cifar100 official`: datasets prepared
and weights fetched ahead of a run (the work is `ekg_jax.data.prepare`'s)."""

import sys

from ekg_jax.data.prepare import main

if __name__ == '__main__':
  sys.exit(main())
