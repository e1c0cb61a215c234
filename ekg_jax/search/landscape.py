"""Loss-landscape measures of a network (the paper's feasibility check).

For a loss over a fixed data subset, as a function of all parameters:
- the extreme Hessian eigenvalues, by Lanczos with full
  reorthogonalisation on Hessian-vector products (`jax.jvp` of `jax.grad`,
  never the Hessian itself);
- the Hessian trace, by Hutchinson's estimator with Rademacher vectors;
- 1-D and 2-D loss slices along filter-normalised random directions (Li et
  al. 2018: each filter of the direction scaled to its weight's norm, BN
  parameters and biases left out).

The paper reports a "condition number" of each searched sub-network without
a definition we could find (the poster gives none, the authors' code has no
landscape code). We report lambda_max, the trace and |lambda_min /
lambda_max| (Li et al.'s measure of non-convexity, which lies in [0, 1]
like the poster's values) and call the last one `condition` with that
caveat.

Sub-networks are analysed slimmed (`slimming.slim`), so pruned weights are
not parameters of the landscape. BN mode: `batch` normalises each batch with
its own statistics (as the search evaluates candidates; running statistics
untouched), `running` uses the stored ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ekg_jax.supernet import model as model_lib
from ekg_jax.training import losses

BN_MODES = ('batch', 'running')


@dataclasses.dataclass(frozen=True)
class LandscapeConfig:
  lanczos_iterations: int = 20  # at most, with a tolerance
  # 0: exactly lanczos_iterations steps; > 0: stop once lambda_min moves by
  # at most this fraction of itself per step (two steps running).
  lanczos_tolerance: float = 0.0
  num_eigenvalues: int = 3
  trace_samples: int = 20
  slice_points: int = 21  # 1-D slice: alpha in linspace(-1, 1, n)
  grid_points: int = 9  # 2-D slice: n x n grid over [-1, 1]^2
  bn: str = 'batch'
  seed: int = 0

  @classmethod
  def from_config(cls, section) -> 'LandscapeConfig':
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in section.items() if k in names})


def dataset_loss(model, variables, images: Sequence[jax.Array],
                 labels: Sequence[jax.Array], bn: str = 'batch'
                 ) -> Callable[[Any], jax.Array]:
  """params -> mean CE over the batches (BN as `bn` says)."""
  if bn not in BN_MODES:
    raise ValueError(f'bn={bn!r}; allowed: {BN_MODES}')
  total = sum(len(y) for y in labels)
  rest = {k: v for k, v in variables.items() if k != 'params'}

  def loss(params):
    value = 0.0
    for x, y in zip(images, labels):
      here = {**rest, 'params': params}
      logits = (model_lib.forward_train(model, here, x)[0] if bn == 'batch'
                else model.apply(here, x, train=False))
      value = value + losses.cross_entropy(logits, y).sum()
    return value / total
  return loss


def flat_hvp(loss: Callable[[Any], jax.Array], params: Any):
  """(hvp: float64 vector -> float64 vector, dimension): the Hessian of
  `loss` at `params` applied to flat vectors, jitted once."""
  flat, unravel = ravel_pytree(params)

  @jax.jit
  def hvp(v):
    tangent = unravel(v.astype(flat.dtype))
    return ravel_pytree(jax.jvp(jax.grad(loss), (params,), (tangent,))[1])[0]

  return (lambda v: np.asarray(hvp(jnp.asarray(v)), np.float64)), flat.size


def lanczos(matvec: Callable[[np.ndarray], np.ndarray], dim: int,
            iterations: int, seed: int = 0, tolerance: float = 0.0,
            trajectory: list | None = None) -> np.ndarray:
  """Ritz values (descending) of a symmetric operator after `iterations`
  Lanczos steps with full reorthogonalisation; with iterations == dim they
  are its eigenvalues. With `tolerance` > 0 it stops earlier, once the
  smallest Ritz value moved by at most `tolerance` (relative to its size)
  in each of the last two steps; `trajectory` receives the smallest Ritz
  value after every step (how far it was still moving)."""
  ritz = lambda a, b: np.sort(np.linalg.eigvalsh(
      np.diag(a) + np.diag(b[:len(a) - 1], 1)
      + np.diag(b[:len(a) - 1], -1)))[::-1]
  trajectory = [] if trajectory is None else trajectory
  moved = lambda k: (abs(trajectory[-k] - trajectory[-k - 1])
                     <= tolerance * abs(trajectory[-k]))
  rng = np.random.default_rng(seed)
  v = rng.standard_normal(dim)
  v /= np.linalg.norm(v)
  basis, alphas, betas = [v], [], []
  w = matvec(v)
  for j in range(min(iterations, dim)):
    alpha = float(w @ basis[-1])
    alphas.append(alpha)
    w = w - alpha * basis[-1] - (betas[-1] * basis[-2] if betas else 0.0)
    for _ in range(2):  # full reorthogonalisation, twice is enough
      w = w - np.stack(basis).T @ (np.stack(basis) @ w)
    beta = float(np.linalg.norm(w))
    trajectory.append(float(ritz(alphas, betas)[-1]))
    converged = tolerance > 0 and len(trajectory) > 2 and moved(1) and moved(2)
    if (j == min(iterations, dim) - 1 or converged
        or beta < 1e-10 * max(1.0, abs(alpha))):
      break
    betas.append(beta)
    basis.append(w / beta)
    w = matvec(basis[-1])
  return ritz(alphas, betas)


def hutchinson_trace(matvec: Callable[[np.ndarray], np.ndarray], dim: int,
                     samples: int, seed: int = 0) -> tuple[float, float]:
  """(mean, standard error) of v^T H v over Rademacher vectors v."""
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(samples):
    v = rng.choice([-1.0, 1.0], dim)
    values.append(float(v @ matvec(v)))
  values = np.asarray(values)
  return float(values.mean()), float(values.std(ddof=1) / np.sqrt(samples)
                                     if samples > 1 else np.nan)


def filter_normalized_direction(params: Any, key: jax.Array) -> Any:
  """A random direction with each filter (last axis of a kernel) scaled to
  the norm of that filter's weights; 1-D parameters (BN, biases) get 0."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  out = []
  for k, w in zip(keys, leaves):
    if w.ndim < 2:
      out.append(jnp.zeros_like(w))
      continue
    d = jax.random.normal(k, w.shape, w.dtype)
    axes = tuple(range(w.ndim - 1))
    norm = lambda a: jnp.sqrt(jnp.sum(jnp.square(a), axis=axes,
                                      keepdims=True))
    scale = norm(w) / jnp.maximum(norm(d), 1e-12)
    out.append(d * scale)
  return jax.tree_util.tree_unflatten(tree, out)


def loss_grid(loss: Callable[[Any], jax.Array], params: Any,
              directions: Sequence[Any], coordinates: np.ndarray
              ) -> np.ndarray:
  """loss(params + sum_i c_i d_i) for each row c of `coordinates`."""
  @jax.jit
  def at(c):
    moved = jax.tree_util.tree_map(
        lambda p, *ds: p + sum(ci * d for ci, d in zip(c, ds)), params,
        *directions)
    return loss(moved)
  return np.asarray([float(at(jnp.asarray(c, jnp.float32)))
                     for c in coordinates])


def analyse(loss: Callable[[Any], jax.Array], params: Any,
            config: LandscapeConfig) -> dict:
  """Every measure of the module docstring, as plain numbers."""
  matvec, dim = flat_hvp(loss, params)
  trajectory = []
  ritz = lanczos(matvec, dim, config.lanczos_iterations, config.seed,
                 config.lanczos_tolerance, trajectory)
  trace, trace_error = hutchinson_trace(matvec, dim, config.trace_samples,
                                        config.seed + 1)
  k1, k2, k3 = jax.random.split(jax.random.key(config.seed), 3)
  line = np.linspace(-1.0, 1.0, config.slice_points)
  slice_1d = loss_grid(loss, params,
                       [filter_normalized_direction(params, k1)],
                       line[:, None])
  grid = np.linspace(-1.0, 1.0, config.grid_points)
  aa, bb = np.meshgrid(grid, grid, indexing='ij')
  slice_2d = loss_grid(loss, params,
                       [filter_normalized_direction(params, k2),
                        filter_normalized_direction(params, k3)],
                       np.stack([aa.ravel(), bb.ravel()], 1))
  lam_max, lam_min = float(ritz[0]), float(ritz[-1])
  return {
      'loss': float(loss(params)), 'parameters': int(dim),
      'lambda_max': lam_max, 'lambda_min': lam_min,
      'top_eigenvalues': [float(r) for r in ritz[:config.num_eigenvalues]],
      'condition': abs(lam_min / lam_max) if lam_max else float('nan'),
      'trace': trace, 'trace_standard_error': trace_error,
      # lambda_min after each Lanczos step: how far it was still moving.
      'lanczos_steps': len(trajectory), 'lambda_min_trajectory': trajectory,
      'slice_1d': {'alpha': line.tolist(), 'loss': slice_1d.tolist()},
      'slice_2d': {'alpha': grid.tolist(), 'beta': grid.tolist(),
                   'loss': slice_2d.reshape(aa.shape).tolist()},
      'config': dataclasses.asdict(config),
  }


def plot(path: str, result: dict, title: str = '') -> None:
  """The 1-D slice and the 2-D contour side by side, as a PNG."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  s1, s2 = result['slice_1d'], result['slice_2d']
  ax1.plot(s1['alpha'], s1['loss'], marker='.')
  ax1.set_xlabel('alpha (filter-normalised direction)')
  ax1.set_ylabel('loss')
  ax1.set_title('1-D slice')
  contour = ax2.contour(s2['alpha'], s2['beta'], np.asarray(s2['loss']).T,
                        levels=15)
  ax2.clabel(contour, fontsize=7)
  ax2.set_xlabel('alpha')
  ax2.set_ylabel('beta')
  ax2.set_title('2-D slice')
  fig.suptitle(f"{title}  lambda_max {result['lambda_max']:.3g}, trace "
               f"{result['trace']:.3g}, |lambda_min/lambda_max| "
               f"{result['condition']:.3g}")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
