"""Per-image time of each region-proposal stage versus the VGG19 forward.

Times, at one image size (1024 x 768 by default), in one run:
  vgg19       regagg_jax.vgg19.features (random init_params weights)
  hesaff      keypoints.detect(backend="hesaff") on the host
  jax         keypoints.detect(backend="jax"), jitted
  selection   keypoints.select_salient (N_max = 4000)
  bound       clustering.compute_bounds once over N_max points (O(P^2))
  kmeans      clustering.global_fast_kmeans (L = 3)
  masks       regions.compute_region_masks (2^L hulls on the conv grid)
and prints each as milliseconds and as a ratio to the VGG19 forward.

CPU (forces the CPU platform):
  python3 benchmarks/regions_speed.py
Accelerator (the default JAX backend, e.g. a GPU):
  python3 benchmarks/regions_speed.py --device
"""

import pathlib
import time

from absl import app
from absl import flags
from absl import logging
import cv2
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_bool("device", False, "Run on the default JAX backend (GPU/TPU) "
                  "instead of forcing the CPU.")
flags.DEFINE_integer("width", 1024, "Image width W_I.")
flags.DEFINE_integer("height", 768, "Image height H_I.")
flags.DEFINE_integer("repeats", 3, "Timed runs per stage (median reported).")
flags.DEFINE_integer("n_max", 4000, "N_max of the salient point rule.")
flags.DEFINE_string("image", str(pathlib.Path(__file__).parents[1] / "data" /
                                 "samples" / "ukbench00000.jpg"),
                    "Image resized to width x height.")


def _time(function, repeats):
  """Median wall seconds of function() after one warm-up (compile) call."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(function())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(function())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  if not FLAGS.device:
    jax.config.update("jax_platforms", "cpu")
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from regagg_jax import clustering, keypoints, regions, vgg19, weighting  # pylint: disable=g-import-not-at-top,g-multiple-import

  logging.info("devices: %s", jax.devices())
  image = cv2.cvtColor(cv2.imread(FLAGS.image), cv2.COLOR_BGR2RGB)
  image = cv2.resize(image, (FLAGS.width, FLAGS.height),
                     interpolation=cv2.INTER_CUBIC)
  variables = vgg19.init_params(jax.random.PRNGKey(0))
  batch = vgg19.preprocess(image[None])
  seconds = {"vgg19": _time(lambda: vgg19.features(variables, batch),
                            FLAGS.repeats)}
  alpha = weighting.spatial_weights(vgg19.features(variables, batch)[0])
  grid = alpha.shape
  seconds["hesaff"] = _time(lambda: keypoints.detect(image, backend="hesaff"),
                            FLAGS.repeats)
  device_image = jnp.asarray(image)
  seconds["jax"] = _time(
      lambda: keypoints.detect(device_image, backend="jax"), FLAGS.repeats)
  points, valid = keypoints.detect(image, backend="hesaff")
  image_shape = (FLAGS.height, FLAGS.width)
  seconds["selection"] = _time(
      lambda: keypoints.select_salient(points, valid, alpha, image_shape,
                                       n_max=FLAGS.n_max), FLAGS.repeats)
  salient, salient_valid = keypoints.select_salient(
      points, valid, alpha, image_shape, n_max=FLAGS.n_max)
  nearest = jnp.sum((salient - jnp.mean(salient, axis=0)) ** 2, axis=1)
  bound = jax.jit(clustering.compute_bounds)
  seconds["bound"] = _time(lambda: bound(salient, salient_valid, nearest),
                           FLAGS.repeats)
  seconds["kmeans"] = _time(
      lambda: clustering.global_fast_kmeans(salient, salient_valid),
      FLAGS.repeats)
  labels, _ = clustering.global_fast_kmeans(salient, salient_valid)
  masks = jax.jit(regions.compute_region_masks)
  cells = jnp.ones(grid, bool)
  size = jnp.asarray(image_shape)
  seconds["masks"] = _time(lambda: masks(salient, labels, cells, size),
                           FLAGS.repeats)
  print(f"{FLAGS.width}x{FLAGS.height}, grid {grid[1]}x{grid[0]}, "
        f"{int(np.sum(valid))} hesaff points, N_max {FLAGS.n_max}, "
        f"{int(np.sum(salient_valid))} salient points, "
        f"device {jax.devices()[0].platform}, median of {FLAGS.repeats}")
  for stage, value in seconds.items():
    print(f"  {stage:10s} {1e3 * value:10.1f} ms   "
          f"{value / seconds['vgg19']:7.3f} x vgg19")
  shared = seconds["selection"] + seconds["kmeans"] + seconds["masks"]
  for backend in ("jax", "hesaff"):
    total = seconds[backend] + shared
    print(f"  proposal with {backend:6s} {1e3 * total:10.1f} ms   "
          f"{total / seconds['vgg19']:7.3f} x vgg19")

if __name__ == "__main__":
  app.run(main)
