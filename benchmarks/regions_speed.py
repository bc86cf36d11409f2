"""Per-image time of each region-proposal stage versus the VGG19 forward.

Times, at one image size (1024 x 768 by default), in one run:
  vgg19       regagg_jax.vgg19.features (random init_params weights)
  hesaff      keypoints.detect(backend="hesaff") on the host (if installed)
  jax         keypoints.detect(backend="jax"), i.e. the jitted
              hessian_affine.detect_hessian_affine (every candidate adapted)
  candidates  hessian_affine.find_candidates (scale space, extrema,
              localisation; no adaptation)
  salient     keypoints.detect_salient: candidates + adaptation in alpha
              order until the N_max best are known + selection (the encoder's
              path)
  selection   keypoints.select_salient (N_max = 4000)
  bound       clustering.compute_bounds once over N_max points (O(P^2))
  kmeans      clustering.global_fast_kmeans (L = 3)
  masks       regions.compute_region_masks (2^L hulls on the conv grid)
  proposal    regions.propose_batch(backend="jax") of the one image: the
              whole jitted proposal (salient + kmeans + masks), as the
              encoder runs it
Every round times the VGG19 forward, each stage, and the forward again; a
round's ratios are to the mean of its two forwards (the CPU may be shared),
and the median ratio over --repeats rounds is printed, after one warm-up
(compile) call per stage.

With --agreement it instead compares the two detector backends on the bundled
samples, with alpha from the real VGG19 weights: the share of jax points
within 2 px of a hesaff point at a matched scale (|log2 sigma ratio| <= 0.5),
and the mean IoU of the 2^L - 1 cluster-subset masks of regions.propose (best
of the L! cluster relabellings, since the two runs may number clusters
differently; the whole-image slot is equal by construction).

CPU (forces the CPU platform):
  PYTHONPATH=. python3 benchmarks/regions_speed.py
Accelerator (the default JAX backend, e.g. a GPU):
  PYTHONPATH=. python3 benchmarks/regions_speed.py --device
Backend agreement on data/samples (about 8 minutes on 2 CPU cores):
  PYTHONPATH=. python3 benchmarks/regions_speed.py --agreement
"""

import functools
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
flags.DEFINE_integer("repeats", 3, "Timed rounds (median ratio reported).")
flags.DEFINE_integer("n_max", 4000, "N_max of the salient point rule.")
flags.DEFINE_bool("agreement", False, "Compare the hesaff and jax backends "
                  "on the bundled samples instead of timing.")
flags.DEFINE_string("image", str(pathlib.Path(__file__).parents[1] / "data" /
                                 "samples" / "ukbench00000.jpg"),
                    "Image resized to width x height.")


def _seconds(function):
  """Wall seconds of one call of function(), blocked until ready."""
  import jax  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  jax.block_until_ready(function())
  return time.perf_counter() - start


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
  from regagg_jax import clustering, hessian_affine, keypoints, regions, vgg19, weighting  # pylint: disable=g-import-not-at-top,g-multiple-import

  logging.info("devices: %s", jax.devices())
  image = cv2.cvtColor(cv2.imread(FLAGS.image), cv2.COLOR_BGR2RGB)
  image = cv2.resize(image, (FLAGS.width, FLAGS.height),
                     interpolation=cv2.INTER_CUBIC)
  image_shape = (FLAGS.height, FLAGS.width)
  variables = vgg19.init_params(jax.random.PRNGKey(0))
  batch = vgg19.preprocess(image[None])
  alpha = weighting.spatial_weights(vgg19.features(variables, batch)[0])
  grid = jnp.asarray(alpha.shape)
  size = jnp.asarray(image_shape)
  device_image = jnp.asarray(image)
  try:
    points, valid = keypoints.detect(image, backend="hesaff")
    has_hesaff = True
  except ImportError:
    points, valid = keypoints.detect(device_image, backend="jax")
    has_hesaff = False
  salient, salient_valid = keypoints.select_salient(
      points, valid, alpha, image_shape, n_max=FLAGS.n_max)
  nearest = jnp.sum((salient - jnp.mean(salient, axis=0)) ** 2, axis=1)
  labels, _ = clustering.global_fast_kmeans(salient, salient_valid)
  bound = jax.jit(clustering.compute_bounds)
  masks = jax.jit(regions.compute_region_masks)
  detect_salient = jax.jit(functools.partial(
      keypoints.detect_salient, padded_shape=image_shape, n_max=FLAGS.n_max))
  cells = jnp.ones(alpha.shape, bool)
  stages = {
      "vgg19": lambda: vgg19.features(variables, batch),
      "jax": lambda: keypoints.detect(device_image, backend="jax"),
      "candidates": lambda: hessian_affine.find_candidates(device_image),
      "salient": lambda: detect_salient(device_image, alpha, grid, size),
      "selection": lambda: keypoints.select_salient(
          points, valid, alpha, image_shape, n_max=FLAGS.n_max),
      "bound": lambda: bound(salient, salient_valid, nearest),
      "kmeans": lambda: clustering.global_fast_kmeans(salient, salient_valid),
      "masks": lambda: masks(salient, labels, cells, size),
      "proposal": lambda: regions.propose_batch(
          device_image[None], alpha[None], cells[None], size[None],
          backend="jax", n_max=FLAGS.n_max),
  }
  if has_hesaff:
    stages["hesaff"] = lambda: keypoints.detect(image, backend="hesaff")
  for function in stages.values():  # compile
    _seconds(function)
  ratios = {stage: [] for stage in stages}
  seconds = {stage: [] for stage in stages}
  for _ in range(FLAGS.repeats):
    before = _seconds(stages["vgg19"])
    for stage, function in stages.items():
      seconds[stage].append(before if stage == "vgg19" else _seconds(function))
    baseline = 0.5 * (before + _seconds(stages["vgg19"]))
    for stage in stages:
      ratios[stage].append(seconds[stage][-1] / baseline)
  print(f"{FLAGS.width}x{FLAGS.height}, grid {alpha.shape[1]}x{alpha.shape[0]}"
        f", {int(np.sum(valid))} {'hesaff' if has_hesaff else 'jax'} points, "
        f"N_max {FLAGS.n_max}, {int(np.sum(salient_valid))} salient points, "
        f"device {jax.devices()[0].platform}, median of {FLAGS.repeats} rounds")
  for stage in stages:
    print(f"  {stage:10s} {1e3 * np.median(seconds[stage]):10.1f} ms   "
          f"{np.median(ratios[stage]):7.3f} x vgg19")
  if has_hesaff:
    shared = sum(np.median(ratios[stage])
                 for stage in ("selection", "kmeans", "masks"))
    print(f"  proposal with hesaff (host + selection + kmeans + masks) "
          f"{np.median(ratios['hesaff']) + shared:7.3f} x vgg19")

if __name__ == "__main__":
  app.run(main)
