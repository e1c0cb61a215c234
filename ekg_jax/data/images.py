"""Image decoding and the streaming pipeline's augmentation, in NumPy and
Pillow (they run in Grain's decoding workers): Inception-style random-resized
crop and flip for training, resize + centre crop for evaluation."""

from __future__ import annotations

import io
import math

import numpy as np

# The usual ImageNet evaluation: resize to 256, centre-crop 224.
EVAL_RESIZE = 256 / 224


class CorruptImage(ValueError):
  pass


def decode(data: bytes):
  """Encoded bytes -> an RGB PIL image; CorruptImage when they do not
  decode (truncated file, not an image)."""
  from PIL import Image
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert('RGB')
  except Exception as e:  # Pillow raises many kinds on damaged data
    raise CorruptImage(f'{type(e).__name__}: {e}') from None


def as_image(value):
  """A record's image: encoded bytes, or an already decoded array (test
  doubles and datasets stored raw)."""
  from PIL import Image
  if isinstance(value, (bytes, np.bytes_)):
    return decode(bytes(value))
  return Image.fromarray(np.asarray(value, np.uint8)).convert('RGB')


def random_resized_crop(image, rng: np.random.Generator, size: int,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
                        ) -> np.ndarray:
  """Inception-style crop: a box of `scale` of the area and aspect ratio in
  `ratio` (log-uniform), 10 tries, else the whole image's centre square;
  resized to size x size (bilinear) in one Pillow call."""
  from PIL import Image
  w, h = image.size
  area = w * h
  box = None
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    cw = int(round(math.sqrt(target * aspect)))
    ch = int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      x = int(rng.integers(0, w - cw + 1))
      y = int(rng.integers(0, h - ch + 1))
      box = (x, y, x + cw, y + ch)
      break
  if box is None:
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w + side) // 2,
           (h + side) // 2)
  return np.asarray(image.resize((size, size), Image.BILINEAR, box=box),
                    np.uint8)


def train_views(image, rng: np.random.Generator, size: int, views: int,
                scale, ratio) -> np.ndarray:
  """[views, size, size, 3] uint8: each view its own crop and flip."""
  out = []
  for _ in range(views):
    view = random_resized_crop(image, rng, size, scale, ratio)
    out.append(view[:, ::-1] if rng.random() < 0.5 else view)
  return np.stack(out)


def center_crop(image, size: int) -> np.ndarray:
  """The authors' evaluation (dataloader/ILSVRC.py): the shorter side
  resized to size * 256/224 (bicubic), the longer to int(scale * side +
  0.5), then the centre size x size."""
  from PIL import Image
  w, h = image.size
  short = round(size * EVAL_RESIZE)
  scale = short / min(w, h)
  nw, nh = ((short, int(scale * h + 0.5)) if w <= h
            else (int(scale * w + 0.5), short))
  image = image.resize((nw, nh), Image.BICUBIC)
  x, y = nw // 2 - size // 2, nh // 2 - size // 2
  return np.asarray(image.crop((x, y, x + size, y + size)), np.uint8)
