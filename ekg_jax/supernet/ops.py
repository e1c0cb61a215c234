"""A convolution whose kernel gradient XLA:CPU computes fast.

XLA:CPU computes a conv's kernel gradient as one conv over the whole batch
with the batch as its contracted feature axis, transposing activations and
output gradients to batch-minor layouts first. Summing that gradient over
16-image slices keeps each piece's transposes in cache: the dense ResNet-56
train step runs 1.09x faster (`benchmarks/README.md`, ablation). Other
backends and batches that do not split use the plain gradient.
"""

from __future__ import annotations

import functools

import jax

from ekg_jax.runtime import backend

# Images per piece of the kernel gradient on CPU (0: one piece; the
# benchmarks' `before` variant sets it so).
KERNEL_GRAD_SLICE = 16


def _conv(x, kernel, strides: int, groups: int):
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(strides, strides), padding='SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _sliced_grad_conv(x, kernel, strides, groups, slice_size):
  return _conv(x, kernel, strides, groups)


def _fwd(x, kernel, strides, groups, slice_size):
  return _conv(x, kernel, strides, groups), (x, kernel)


def _bwd(strides, groups, slice_size, residuals, g):
  x, kernel = residuals
  dx = jax.vjp(lambda x: _conv(x, kernel, strides, groups), x)[1](g)[0]
  dk = None
  for start in range(0, x.shape[0], slice_size):  # unrolled: XLA:CPU runs
    # convs inside loops far slower than straight-line ones
    part = jax.vjp(lambda k: _conv(x[start:start + slice_size], k, strides,
                                   groups), kernel)[1](
                                       g[start:start + slice_size])[0]
    dk = part if dk is None else dk + part
  return dx, dk


_sliced_grad_conv.defvjp(_fwd, _bwd)


def conv2d(x: jax.Array, kernel: jax.Array, strides: int = 1,
           groups: int = 1) -> jax.Array:
  """'SAME' NHWC x HWIO convolution, the kernel gradient summed over
  slices of the batch on CPU."""
  batch = x.shape[0]
  if (not KERNEL_GRAD_SLICE or not backend.policy().sliced_kernel_grad
      or not isinstance(batch, int)  # symbolic (jax.export): plain conv
      or batch <= KERNEL_GRAD_SLICE or batch % KERNEL_GRAD_SLICE):
    return _conv(x, kernel, strides, groups)
  return _sliced_grad_conv(x, kernel, strides, groups, KERNEL_GRAD_SLICE)
