"""How many images U^1 (eq. 4) needs: mAP against the fitting sample, and
what fitting on a sample saves in a folder's encode time.

U^1 is a PCA of the eq. (3) region descriptors, so fitting it runs VGG19
and the region stage over pooling.reduction_images images before the store
is encoded (fitting.fit_reduction, then pipeline.encode_rows). With the
sample as large as the set, every image goes through the network twice.

--part=accuracy: `--mode=eval` of O2_R on the 56 bundled samples with the
demo's settings (configs/demo.py: D = 16 whitened, the most sensitive
setting of the demo table: O2_R has mAP 0.9910 there, where the folder
defaults reach 1.0 whatever U^1 is fitted on) with U^1 fitted on 56 (all),
28, 14 and 7 images spread over the set (fitting.sample_rows); prints mAP
and the N-S score of each.

--part=time: a folder of --num_images copies of the samples, each cropped
at random (60-100 % of each side, seed 0) and shrunk to a longer side of
--max_size; times, in this run, fitting U^1 on every image, fitting it on
the sample of configs/default.py (pooling.reduction_images) and encoding
the store once; prints the encode time of the folder both ways (fit +
encode) and their ratio.

  PYTHONPATH=. nice python3 benchmarks/reduction_sample.py --part=accuracy
  PYTHONPATH=. nice python3 benchmarks/reduction_sample.py --part=time \
      --num_images=1000 --max_size=256
"""

import os
import tempfile
import time

from absl import app
from absl import flags
import cv2
import numpy as np

from configs import demo
from configs import folder
from regagg_jax.experiment import modes
from regagg_jax.experiment import fitting
from regagg_jax.experiment import pipeline

_PART = flags.DEFINE_enum('part', 'accuracy', ['accuracy', 'time'], 'what')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 1000, 'folder size (time)')
_MAX_SIZE = flags.DEFINE_integer('max_size', 256, 'longer side (time)')

SAMPLES = os.path.join(os.path.dirname(__file__), '..', 'data', 'samples')


def _accuracy():
  print('U^1 fitted on | mAP    | N-S')
  for count in (56, 28, 14, 7):
    with tempfile.TemporaryDirectory() as workdir:
      config = demo.get_config()
      config.workdir = workdir
      config.eval.figure_queries = 0
      config.pooling.reduction_images = count
      result = modes.evaluate(config)
    print(f'{count:>13} | {result["mAP"]:.4f} | {result.get("N-S", "-")}')


def _folder(directory, num_images, max_size):
  """num_images random crops of the samples, longer side max_size."""
  rng = np.random.default_rng(0)
  sources = sorted(f for f in os.listdir(SAMPLES) if f.endswith('.jpg'))
  paths = []
  for i in range(num_images):
    image = cv2.imread(os.path.join(SAMPLES, sources[i % len(sources)]))
    height, width = image.shape[:2]
    h, w = (int(s * rng.uniform(0.6, 1.0)) for s in (height, width))
    y, x = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
    crop = image[y : y + h, x : x + w]
    scale = max_size / max(h, w)
    crop = cv2.resize(crop, (round(w * scale), round(h * scale)))
    paths.append(os.path.join(directory, f'{i:05d}.jpg'))
    cv2.imwrite(paths[-1], crop)
  return paths


def _timed(function):
  start = time.perf_counter()
  value = function()
  return value, time.perf_counter() - start


def _time(num_images, max_size):
  with tempfile.TemporaryDirectory() as directory:
    paths = _folder(directory, num_images, max_size)
    config = folder.get_config(directory)
    sample = config.pooling.reduction_images
    rows = list(range(len(paths)))
    fitting.fit_reduction(config, paths[:8])  # compile outside the timing
    config.pooling.reduction_images = 0
    _, fit_all = _timed(lambda: fitting.fit_reduction(config, paths))
    config.pooling.reduction_images = sample
    reduction, fit_sample = _timed(lambda: fitting.fit_reduction(config, paths))
    _, encode = _timed(
      lambda: pipeline.encode_rows(config, paths, rows, reduction=reduction)
    )
  before, after = fit_all + encode, fit_sample + encode
  print(
    f'{num_images} images, longer side {max_size}: fit U^1 on all '
    f'{fit_all:.0f} s, on {min(sample, num_images)} {fit_sample:.0f} s, '
    f'encode {encode:.0f} s\n'
    f'folder encode time: before (U^1 on all) {before:.0f} s, after '
    f'{after:.0f} s, after / before {after / before:.2f}'
  )


def main(argv):
  del argv
  if _PART.value == 'accuracy':
    _accuracy()
  else:
    _time(_NUM_IMAGES.value, _MAX_SIZE.value)


if __name__ == '__main__':
  app.run(main)
