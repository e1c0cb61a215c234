"""PyTorch reference of the EKG training steps, for side-by-side timing.

Runs in its own Python 3.11 virtualenv (`make torch-venv`), as a worker the
benchmark driver talks to over stdin/stdout, one JSON object a line, so the
JAX and PyTorch sides can be timed alternately while each keeps its compiled
state:

  {"cmd": "setup", "kind": "finetune"|"dense", "mode": "eager"|"compile",
   "batch": 128, "steps": 3, "widths": {...}, "teachers": 5, "depth": 56,
   "mean": [...], "std": [...], "threads": 2}  -> {"compile_s": ...}
  {"cmd": "time"}                   -> {"seconds": ..., "steps": 3}
  {"cmd": "check", "npz": path}      -> {"logits": ..., "loss": ...}
  {"cmd": "inference", "batches": [1, 256], "widths": {...}, "repeats": 5,
   "depth": 56}                      -> eval seconds, dense and slimmed
  {"cmd": "conv_kernels", "shapes": [[N, H, W, C], ...], "repeats": 10}
                                     -> ms of a 3x3 conv's three kernels

The network is the toolkit's CIFAR ResNet (TensorFlow 'SAME' padding, BN
eps 1e-5 / momentum 0.9, the same names), the step the same as
`ekg_jax.training.steps.make_step`: per view colour jitter, normalisation, flip,
reflect-pad crop; both views in one batch, CE plus KL_tau to the filtered
teacher mean (`finetune`), or one view (no jitter) and CE only (`dense`); SGD with Nesterov momentum
and weight decay. `check` loads the JAX variables and inputs from an .npz
and returns the eval-mode logits and the step's loss on fixed views, which
the driver compares with JAX's: the two sides compute the same function.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

STAGE_WIDTHS = (16, 32, 64)


def same_conv(x, conv):
  """TensorFlow 'SAME' for a stride-2 3x3 conv pads bottom/right only."""
  if conv.stride[0] == 2 and conv.kernel_size[0] == 3:
    x = F.pad(x, (0, 1, 0, 1))
  return conv(x)


def conv(cin, cout, k, stride):
  return nn.Conv2d(cin, cout, k, stride,
                   padding=1 if (k == 3 and stride == 1) else 0, bias=False)


def bn(c):
  return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)  # torch momentum = 1 - 0.9


class Block(nn.Module):

  def __init__(self, cin, inner, cout, stride, projection):
    super().__init__()
    self.conv1, self.bn1 = conv(cin, inner, 3, stride), bn(inner)
    self.conv2, self.bn2 = conv(inner, cout, 3, 1), bn(cout)
    self.projection = projection
    if projection:
      self.conv3, self.bn3 = conv(cin, cout, 1, stride), bn(cout)

  def forward(self, x):
    h = F.relu(self.bn1(same_conv(x, self.conv1)))
    h = self.bn2(self.conv2(h))
    if self.projection:
      x = self.bn3(self.conv3(x))
    return F.relu(h + x)


class CifarResNet(nn.Module):
  """Module names follow the JAX model's ('BasicBlock{s}.{b}' -> blocks)."""

  def __init__(self, depth=56, widths=None, num_classes=10):
    super().__init__()
    widths = widths or {}
    n = (depth - 2) // 6
    stream = [widths.get(f'stage{s}', w) for s, w in enumerate(STAGE_WIDTHS)]
    self.conv, self.bn = conv(3, stream[0], 3, 1), bn(stream[0])
    self.names, blocks = [], []
    for s in range(3):
      for b in range(n):
        projection = b == 0 and s > 0
        cin = stream[s - 1] if projection else stream[s]
        inner = widths.get(f'stage{s}/block{b}', STAGE_WIDTHS[s])
        blocks.append(Block(cin, inner, stream[s],
                            2 if projection else 1, projection))
        self.names.append(f'BasicBlock{s}.{b}')
    self.blocks = nn.ModuleList(blocks)
    self.fc = nn.Linear(stream[2], num_classes)

  def forward(self, x):
    x = F.relu(self.bn(self.conv(x)))
    for block in self.blocks:
      x = block(x)
    return self.fc(x.mean(dim=(2, 3)))

  def load_jax(self, flat: dict) -> None:
    """Loads 'params/<layer>/<name>' and 'batch_stats/...' arrays."""

    def bn_from(module, layer):
      module.weight.data = torch.from_numpy(flat[f'params/{layer}/scale'])
      module.bias.data = torch.from_numpy(flat[f'params/{layer}/bias'])
      module.running_mean.data = torch.from_numpy(
          flat[f'batch_stats/{layer}/mean'])
      module.running_var.data = torch.from_numpy(
          flat[f'batch_stats/{layer}/var'])

    def conv_from(module, layer):  # HWIO -> OIHW
      module.weight.data = torch.from_numpy(
          np.ascontiguousarray(flat[f'params/{layer}/kernel'].transpose(
              3, 2, 0, 1)))

    conv_from(self.conv, 'conv')
    bn_from(self.bn, 'bn')
    for name, block in zip(self.names, self.blocks):
      for i in (1, 2, 3):
        if hasattr(block, f'conv{i}'):
          conv_from(getattr(block, f'conv{i}'), f'{name}/conv{i}')
          bn_from(getattr(block, f'bn{i}'), f'{name}/bn{i}')
    self.fc.weight.data = torch.from_numpy(
        np.ascontiguousarray(flat['params/fc/kernel'].T))
    self.fc.bias.data = torch.from_numpy(flat['params/fc/bias'])


def augment(images: torch.Tensor, mean, std, pad: int = 4,
            jitter: bool = True) -> torch.Tensor:
  """uint8 [B,H,W,3] -> one normalised NCHW view, per-image draws, as
  `ekg_jax.data.datasets.augment_each` (colour jitter, normalise, flip, crop)."""
  x = images.float()
  b, h, w, _ = x.shape
  if jitter:
    x = color_jitter(x)
  x = (x - torch.tensor(mean)) / torch.tensor(std)
  flip = torch.rand(b) < 0.5
  x = torch.where(flip[:, None, None, None], x.flip(2), x)
  x = F.pad(x.permute(0, 3, 1, 2), (pad,) * 4, mode='reflect')
  dy = torch.randint(0, 2 * pad + 1, (b,))
  dx = torch.randint(0, 2 * pad + 1, (b,))
  rows = (dy[:, None] + torch.arange(h))[:, :, None]
  cols = (dx[:, None] + torch.arange(w))[:, None, :]
  x = x[torch.arange(b)[:, None, None], :, rows, cols]  # [B, H, W, C]
  return x.permute(0, 3, 1, 2).contiguous()


def color_jitter(x: torch.Tensor) -> torch.Tensor:
  """Brightness, contrast and HSV saturation, as `ekg_jax.data.datasets`."""
  u = torch.rand(x.shape[0], 3, 1, 1, 1)
  c, s = 0.8 + 0.4 * u[:, 0], 0.8 + 0.4 * u[:, 1]
  x = x + (0.4 * u[:, 2] - 0.2)  # brightness: +-0.2 on the 0-255 scale
  image_mean = x.mean(dim=(1, 2), keepdim=True)
  x = (x - image_mean) * c + image_mean
  value = x.amax(-1, keepdim=True)  # HSV saturation, closed form
  sat = torch.where(value > 0, (value - x.amin(-1, keepdim=True))
                    / value.clamp_min(1e-12), torch.zeros_like(value))
  ratio = torch.where(sat > 0, (sat * s).clamp(0, 1) / sat.clamp_min(1e-12),
                      torch.ones_like(sat))
  return value - ratio * (value - x)


def kl_divergence(teacher, student, t):
  p_t = F.softmax(teacher / t, -1)
  return t * (p_t * (F.log_softmax(teacher / t, -1)
                     - F.log_softmax(student / t, -1))).sum(-1)


def two_views(model, views: list) -> list:
  """Both views through the network as one batch, as `distill.views_logits`
  (BN statistics over both)."""
  return list(model(torch.cat(views)).chunk(len(views)))


def ensemble_loss(logits: list, labels, bank, t: float):
  """Mean over views of CE + KL_tau(filtered teacher mean || view)."""
  ce = sum(F.cross_entropy(z, labels) for z in logits)
  student_mean = (sum(logits) / len(logits)).detach()
  top = bank[:, 0]
  student = kl_divergence(top, student_mean, t).sum()
  per_teacher = kl_divergence(top[:, None], bank, t).sum(0)  # [K]
  used = per_teacher < student
  used[0] = True
  weights = used.float() / used.sum()
  target = torch.einsum('bkc,k->bc', bank, weights)
  kd = sum(kl_divergence(target, z, t).mean() for z in logits)
  return (ce + kd) / len(logits)


class Step:
  """One training step of `kind` on a fixed uint8 batch."""

  def __init__(self, kind, mode, batch, widths, teachers, mean, std,
               depth=56, classes=10, temperature=4.0):
    torch.manual_seed(0)
    self.kind, self.temperature = kind, temperature
    # One view (dense) is only flipped and cropped, as the toolkit's.
    self.augment = lambda images: augment(images, mean, std,
                                          jitter=kind != 'dense')
    self.model = CifarResNet(depth, widths, classes)
    self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01,
                               momentum=0.9, nesterov=True,
                               weight_decay=5e-4)
    self.images = torch.randint(0, 256, (batch, 32, 32, 3), dtype=torch.uint8)
    self.labels = torch.randint(0, classes, (batch,))
    self.bank = torch.randn(batch, teachers, classes)
    self.loss = self._loss
    if mode == 'compile':
      self.loss = torch.compile(self._loss)
    self.model.train()

  def _loss(self, images, labels, bank, views=None):
    if self.kind == 'dense':
      x = self.augment(images) if views is None else views[0]
      return F.cross_entropy(self.model(x), labels)
    views = views or [self.augment(images), self.augment(images)]
    return ensemble_loss(two_views(self.model, views), labels, bank,
                         self.temperature)

  def __call__(self):
    self.opt.zero_grad(set_to_none=True)
    loss = self.loss(self.images, self.labels, self.bank)
    loss.backward()
    self.opt.step()
    return loss


def check(request: dict) -> dict:
  """Eval logits and the training loss of JAX's variables on JAX's views."""
  flat = dict(np.load(request['npz']))
  widths = json.loads(str(flat.pop('widths')))
  model = CifarResNet(int(flat.pop('depth')), widths)
  model.load_jax(flat)
  views = [torch.from_numpy(flat[f'view{v}']).permute(0, 3, 1, 2)
           for v in range(2)]
  labels = torch.from_numpy(flat['labels']).long()
  bank = torch.from_numpy(flat['bank'])
  with torch.no_grad():
    model.eval()
    logits = model(views[0])
    model.train()
    loss = ensemble_loss(two_views(model, views), labels, bank,
                         float(flat['temperature']))
  return {'logits': logits.numpy().tolist(), 'loss': float(loss)}


def inference(batches, widths, repeats, depth) -> dict:
  """Eval-mode seconds per batch of the dense and the slimmed network,
  alternating, per batch size (`jax_worker.inference` without `masked`)."""
  nets = {'dense': CifarResNet(depth).eval(),
          'slimmed': CifarResNet(depth, widths).eval()}
  out = {}
  with torch.no_grad():
    for b in batches:
      x = torch.randn(b, 3, 32, 32)
      times = {n: [] for n in nets}
      for net in nets.values():
        net(x)
      for _ in range(max(repeats, 3 if b > 1 else 20)):
        for n, net in nets.items():
          start = time.perf_counter()
          net(x)
          times[n].append(time.perf_counter() - start)
      out[str(b)] = {'seconds': times}
  return out


def conv_kernels(shapes, repeats) -> dict:
  """Median ms of a 3x3 padding-1 conv on each NHWC shape (run as NCHW):
  forward, input gradient and kernel gradient (autograd's own kernels)."""
  out = {}
  for n, h, w, c in shapes:
    x, g = torch.randn(n, c, h, w), torch.randn(n, c, h, w)
    kernel = torch.randn(c, c, 3, 3)

    def backward(mask):
      return torch.ops.aten.convolution_backward(
          g, x, kernel, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

    programs = {'forward': lambda: F.conv2d(x, kernel, padding=1),
                'input_grad': lambda: backward([True, False, False]),
                'kernel_grad': lambda: backward([False, True, False])}
    entry = out[f'{n}x{h}x{w}x{c}'] = {}
    with torch.no_grad():
      for name, fn in programs.items():
        fn()
        times = []
        for _ in range(repeats):
          start = time.perf_counter()
          fn()
          times.append(time.perf_counter() - start)
        entry[name] = float(np.median(times)) * 1e3
  return out


def _setup(request, state):
  torch.set_num_threads(request.get('threads', torch.get_num_threads()))
  start = time.perf_counter()
  state['steps'] = request['steps']
  step = state['step'] = Step(
      request['kind'], request['mode'], request['batch'],
      request.get('widths') or {}, request['teachers'], request['mean'],
      request['std'], request['depth'])
  step()  # warm-up; torch.compile compiles here
  return {'compile_s': time.perf_counter() - start,
          'torch': torch.__version__, 'threads': torch.get_num_threads()}


def _time(request, state):
  start = time.perf_counter()
  for _ in range(state['steps']):
    state['step']()
  return {'seconds': time.perf_counter() - start, 'steps': state['steps']}


# Each command: (request, the step this process keeps) -> its reply.
COMMANDS = {
    'setup': _setup,
    'time': _time,
    'peak': lambda request, state: {'max_rss_bytes': resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss * 1024},
    'check': lambda request, state: check(request),
    'inference': lambda request, state: inference(
        request['batches'], request['widths'], request['repeats'],
        request['depth']),
    'conv_kernels': lambda request, state: conv_kernels(
        request['shapes'], request['repeats']),
}


def main():
  state = {}
  for line in sys.stdin:
    request = json.loads(line)
    command = COMMANDS.get(request['cmd'])
    reply = (command(request, state) if command else
             {'error': f"unknown cmd {request['cmd']!r}"})
    print(json.dumps(reply), flush=True)


if __name__ == '__main__':
  main()
