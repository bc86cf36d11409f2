"""Per-image time of each region-proposal stage versus the VGG19 forward.

Times, at one image size (1024 x 768 by default), in one run:
  vgg19       regagg_jax.vgg19.features (random init_params weights)
  hesaff      keypoints.detect(backend="hesaff") on the host
  jax         keypoints.detect(backend="jax"), i.e. the jitted
              hessian_affine.detect_hessian_affine
  selection   keypoints.select_salient (N_max = 4000)
  bound       clustering.compute_bounds once over N_max points (O(P^2))
  kmeans      clustering.global_fast_kmeans (L = 3)
  masks       regions.compute_region_masks (2^L hulls on the conv grid)
and prints each as milliseconds and as a ratio to the VGG19 forward.

With --agreement it instead compares the two detector backends on the bundled
samples, with alpha from the real VGG19 weights: the share of jax points
within 2 px of a hesaff point at a matched scale (|log2 sigma ratio| <= 0.5),
and the mean IoU of the 2^L - 1 cluster-subset masks of regions.propose (best
of the L! cluster relabellings, since the two runs may number clusters
differently; the whole-image slot is equal by construction).

CPU (forces the CPU platform):
  python3 benchmarks/regions_speed.py
Accelerator (the default JAX backend, e.g. a GPU):
  python3 benchmarks/regions_speed.py --device
Backend agreement on data/samples (about 8 minutes on 2 CPU cores):
  python3 benchmarks/regions_speed.py --agreement
"""

import itertools
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
flags.DEFINE_bool("agreement", False, "Compare the hesaff and jax backends "
                  "on the bundled samples instead of timing.")
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


def _mask_iou(first, second):
  union = np.sum(first | second)
  return np.sum(first & second) / union if union else 1.0


def measure_agreement(samples, num_clusters=3):
  """Prints the point and region agreement of the two detector backends."""
  from regagg_jax import images, keypoints, regions, vgg19, weighting  # pylint: disable=g-import-not-at-top,g-multiple-import
  variables = vgg19.load_params()
  shares, ious = [], []
  for path in samples:
    image = images.load_image(path)
    features = vgg19.features(variables, vgg19.preprocess(image[None]))[0]
    alpha = weighting.spatial_weights(features)
    found = {}
    for backend in ("jax", "hesaff"):
      points, shapes, valid = (np.asarray(a) for a in keypoints.detect_shapes(
          image, backend=backend))
      sigma = np.sqrt(np.abs(np.linalg.det(shapes[valid])))
      masks, _ = regions.propose(image, alpha, backend=backend,
                                 num_clusters=num_clusters)
      found[backend] = points[valid], sigma, np.asarray(masks)
    (ours, our_sigma, our_masks), (theirs, their_sigma, their_masks) = (
        found["jax"], found["hesaff"])
    near = np.linalg.norm(ours[:, None] - theirs[None], axis=-1) <= 2.0
    matched = np.abs(np.log2(our_sigma[:, None] / their_sigma[None])) <= 0.5
    shares.append(np.mean(np.any(near & matched, axis=1)))
    best = 0.0
    for order in itertools.permutations(range(num_clusters)):
      other = [sum(1 << order[l] for l in range(num_clusters) if m >> l & 1)
               for m in range(1, 2 ** num_clusters)]
      best = max(best, np.mean([_mask_iou(our_masks[m - 1], their_masks[q - 1])
                                for m, q in zip(range(1, 2 ** num_clusters),
                                                other)]))
    ious.append(best)
    logging.info("%s: share %.3f, IoU %.3f", path, shares[-1], best)
  print(f"{len(samples)} images: share of jax points within 2 px of a hesaff "
        f"point at matched scale {np.mean(shares):.3f}; mean IoU of the "
        f"cluster-subset masks {np.mean(ious):.3f} (median "
        f"{np.median(ious):.3f}, min {np.min(ious):.3f})")


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  if not FLAGS.device:
    jax.config.update("jax_platforms", "cpu")
  if FLAGS.agreement:
    measure_agreement(sorted(pathlib.Path(FLAGS.image).parent.glob("*.jpg")))
    return
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
