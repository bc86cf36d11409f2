"""Memory over a long run: RSS and memory maps every `every` images (issue 16).

Builds (or reuses) a folder of --num_images photos made from the 56 bundled
samples by random crops of a realistic mix of aspect ratios, resized to a
longer side of --size px, with a groundtruth.json of --num_queries
box-cropped queries (the object, sample id // 4, is the group), then runs
one mode on it (demo: every method in one VGG19 pass, two passes for O2;
encode / eval: fit_reduction then encode_rows, and the cropped queries)
while every progress bar samples, each `every` images and at its end:

  VmRSS (MiB, /proc/self/status), the lines of /proc/self/maps, the
  process's compiled-jit count (resources.compilations), every XLA
  compilation (jax.monitoring's backend_compile events), live jax arrays, and the number of distinct shape buckets seen so far.

The curve goes to stdout and --csv. A long run memory-bounded in the number
of images shows RSS and the map count flat after the warm-up (the first
images of each shape bucket).

  python3 benchmarks/memory_growth.py --folder=/tmp/h16/folder \\
      --num_images=1000 --mode=demo --backend=jax --csv=/tmp/h16/demo.csv
  python3 benchmarks/memory_growth.py --folder=/tmp/h16/folder \\
      --num_images=1000 --mode=eval --csv=/tmp/h16/eval.csv

Measured on the shared 2-core CPU (no GPU), issue 16, 2026-12-08, folder of
--size=256 photos (--limit=300: 136 sizes, 3 buckets), --mode=eval hesaff:
before (7915a4d) memory maps 1,027 -> 9,460 -> 15,964 at 0 / 25 / 50 images
(~430 maps per new image size: the selection compiled per size), RSS 247 ->
1,316 MiB; after (21b428c) 2,928 / 3,473 at 25 / 50, then 3,473 to image 256
of pass 1 and 3,561-3,606 through pass 2's 300 images (RSS 952 -> 1,046
MiB: the store itself, ~0.3 MiB per image). --mode=demo --backend=jax,
--limit=200: 6,281 maps from image 75 to 200 of pass 1, 6,408 in pass 2.
"""

import csv
import json
import os
import sys
import time

from absl import app
from absl import flags
import cv2
import jax
import numpy as np
import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import demo as demo_config  # pylint: disable=g-import-not-at-top
from regagg_jax.encoding import batch_encoder  # pylint: disable=g-import-not-at-top
from regagg_jax.encoding import resources  # pylint: disable=g-import-not-at-top
from regagg_jax.experiment import modes  # pylint: disable=g-import-not-at-top
from regagg_jax.features import images  # pylint: disable=g-import-not-at-top

_FOLDER = flags.DEFINE_string('folder', '/tmp/h16/folder', 'Image folder.')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 1000, 'Images to build.')
_LIMIT = flags.DEFINE_integer('limit', 0, 'Use the first n images (0: all).')
_SIZE = flags.DEFINE_integer('size', 512, 'Longer side of the built images.')
_NUM_QUERIES = flags.DEFINE_integer('num_queries', 12, 'Cropped queries.')
_MODE = flags.DEFINE_enum('mode', 'demo', ['demo', 'encode', 'eval'], 'Mode.')
_BACKEND = flags.DEFINE_enum('backend', 'jax', ['jax', 'hesaff'], 'Detector.')
_WEIGHTS = flags.DEFINE_enum(
  'weights', 'imagenet', ['imagenet', 'random'], 'VGG19 weights.'
)
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/h16/work', 'Run workdir.')
_EVERY = flags.DEFINE_integer('every', 50, 'Images between samples.')
_CSV = flags.DEFINE_string('csv', '', 'Write the curve here too.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the crops.')

_ASPECTS = (4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 9, 1.0)
"""Camera aspect ratios (width / height); half the photos take one of them,
the others a random ratio in [1/2, 2] (cropped or panoramic shots)."""


def build_folder(folder, num_images, size, num_queries, seed):
  """Writes img_NNNN.jpg and groundtruth.json (explicit, boxed queries)."""
  samples = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'data')
  samples = os.path.join(samples, 'samples')
  names = sorted(n for n in os.listdir(samples) if n.endswith('.jpg'))
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  objects, shapes = [], []
  for index in range(num_images):
    sample = int(rng.integers(len(names)))
    image = cv2.imread(os.path.join(samples, names[sample]))
    height, width = image.shape[:2]
    aspect = (
      _ASPECTS[rng.integers(len(_ASPECTS))]
      if rng.random() < 0.5
      else float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    )
    area = rng.uniform(0.5, 1.0) * height * width
    crop_w = int(min(width, np.sqrt(area * aspect)))
    crop_h = int(min(height, crop_w / aspect))
    y = int(rng.integers(height - crop_h + 1))
    x = int(rng.integers(width - crop_w + 1))
    crop = image[y : y + crop_h, x : x + crop_w]
    scale = size / max(crop_h, crop_w)
    out = cv2.resize(
      crop,
      (max(1, round(crop_w * scale)), max(1, round(crop_h * scale))),
      interpolation=cv2.INTER_LINEAR,
    )
    cv2.imwrite(os.path.join(folder, f'img_{index:04d}.jpg'), out)
    objects.append(sample // 4)
    shapes.append(out.shape[:2])
  files = [f'img_{i:04d}.jpg' for i in range(num_images)]
  queries = []
  first = min(num_images, 8 * num_queries)  # in any --limit >= first
  for index in rng.choice(first, num_queries, replace=False):
    height, width = shapes[index]
    x1, y1 = int(width * 0.1), int(height * 0.1)
    queries.append(
      {
        'image': files[index],
        'positives': [
          files[i]
          for i in range(num_images)
          if objects[i] == objects[index] and i != index
        ],
        'box': [x1, y1, width - x1, height - y1],
      }
    )
  with open(os.path.join(folder, 'groundtruth.json'), 'w') as stream:
    json.dump({'images': files, 'queries': queries}, stream)


def probe():
  """(VmRSS MiB, /proc/self/maps lines) of this process."""
  with open('/proc/self/status') as stream:
    rss = next(int(l.split()[1]) for l in stream if l.startswith('VmRSS'))
  with open('/proc/self/maps') as stream:
    maps = sum(1 for _ in stream)
  return rss / 1024, maps


class Recorder:
  """Rows of the curve, sampled by the progress bars (see `sampling_bar`)."""

  def __init__(self, every, batch_size):
    self.every, self.batch_size, self.rows = every, batch_size, []
    self.start = time.perf_counter()
    self.buckets = set()
    self.backend_compiles = 0
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, name, duration, **kwargs):
    del duration, kwargs
    if name == '/jax/core/compile/backend_compile_duration':
      self.backend_compiles += 1  # every XLA executable, nested jits too

  def sample(self, desc, done):
    rss, maps = probe()
    row = {
      'pass': desc,
      'images': done,
      'rss_mib': round(rss, 1),
      'maps': maps,
      'compilations': resources.compilations(),
      'xla_compiles': self.backend_compiles,
      'live_arrays': len(jax.live_arrays()),
      'buckets': len(self.buckets),
      'seconds': round(time.perf_counter() - self.start, 1),
    }
    self.rows.append(row)
    print(' '.join(f'{k}={v}' for k, v in row.items()), flush=True)


def sampling_bar(recorder):
  """A tqdm class that calls recorder.sample every `every` images (batches
  count batch_size images) and when the bar closes."""

  class Bar(tqdm.tqdm):
    def update(self, n=1):
      scale = recorder.batch_size if self.unit == 'batch' else 1
      before = self.n * scale // recorder.every
      result = super().update(n)
      if self.n * scale // recorder.every > before:
        recorder.sample(self.desc, self.n * scale)
      return result

    def close(self):
      if not self.disable and not getattr(self, '_sampled', False):
        self._sampled = True
        scale = recorder.batch_size if self.unit == 'batch' else 1
        recorder.sample(self.desc + ' (end)', self.n * scale)
      super().close()

  return Bar


def make_config():
  config = demo_config.get_config()
  config.name = f'memory-{_MODE.value}-{_BACKEND.value}'
  config.workdir = _WORKDIR.value
  config.eval.dataset = 'folder'
  config.eval.root = _FOLDER.value
  config.features.max_size = _SIZE.value
  config.features.weights = _WEIGHTS.value
  config.regions.backend = _BACKEND.value
  config.pca.dim = 128
  config.pca.min_vectors_per_dim = 2
  return config


def main(argv):
  del argv
  folder = _FOLDER.value
  if not os.path.isfile(os.path.join(folder, 'groundtruth.json')):
    build_folder(
      folder, _NUM_IMAGES.value, _SIZE.value, _NUM_QUERIES.value, _SEED.value
    )
  if _LIMIT.value:  # a smaller folder of the first images (links)
    small = f'{folder.rstrip("/")}-{_LIMIT.value}'
    if not os.path.isdir(small):
      os.makedirs(small)
      spec = json.load(open(os.path.join(folder, 'groundtruth.json')))
      kept = spec['images'][: _LIMIT.value]
      for name in kept:
        os.symlink(
          os.path.join(os.path.abspath(folder), name), f'{small}/{name}'
        )
      spec['queries'] = [q for q in spec['queries'] if q['image'] in kept]
      for query in spec['queries']:
        query['positives'] = [p for p in query['positives'] if p in kept]
      spec['images'] = kept
      json.dump(spec, open(os.path.join(small, 'groundtruth.json'), 'w'))
    folder = small
  config = make_config()
  config.eval.root = folder
  if jax.default_backend() == 'cpu':
    batch_encoder.limit_lapack_threads()
  recorder = Recorder(_EVERY.value, config.features.batch_size)
  bucket_shape = images.bucket_shape

  def counting_bucket_shape(height, width, **kwargs):
    shape = bucket_shape(height, width, **kwargs)
    recorder.buckets.add(shape)
    return shape

  images.bucket_shape = counting_bucket_shape
  tqdm.tqdm = sampling_bar(recorder)
  recorder.sample('start', 0)
  modes.MODES[_MODE.value](config)
  recorder.sample('done', 0)
  if _CSV.value:
    with open(_CSV.value, 'w', newline='') as stream:
      writer = csv.DictWriter(stream, fieldnames=list(recorder.rows[0]))
      writer.writeheader()
      writer.writerows(recorder.rows)
    print(f'wrote {_CSV.value}')


if __name__ == '__main__':
  app.run(main)
