"""Per-image time of each region-proposal stage versus the VGG19 forward.

Times, at one image size (1024 x 768 by default), in one run:
  vgg19       regagg_jax.features.vgg19.features (random init_params weights)
  hesaff      proposal.detect(backend="hesaff") on the host (if installed)
  jax         proposal.detect(backend="jax"), i.e. the jitted
              hessian_affine.detect_hessian_affine (every candidate adapted)
  candidates  hessian_affine.find_candidates (scale space, extrema,
              localisation; no adaptation)
  salient     keypoints.detect_salient: candidates + adaptation in alpha
              order until the N_max best are known + selection (the encoder's
              path)
  selection   keypoints.select_salient (N_max = 4000)
  bound       clustering.compute_bounds once over N_max points (O(P^2))
  kmeans      clustering.global_fast_kmeans (L = 3)
  masks       region_masks.compute_region_masks (2^L hulls on the conv grid)
  proposal    proposal.propose_batch (backend "jax") of the one image: the
              whole jitted proposal (salient + kmeans + masks), as the
              encoder runs it
Every round times the VGG19 forward, each stage, and the forward again; a
round's ratios are to the mean of its two forwards (the CPU may be shared),
and the median ratio over --repeats rounds is printed, after one warm-up
(compile) call per stage.

With --agreement it instead compares the two detector backends on the bundled
samples, with alpha from the real VGG19 weights: the share of jax points
within 2 px of a hesaff point at a matched scale (|log2 sigma ratio| <= 0.5),
and the mean IoU of the 2^L - 1 cluster-subset masks of proposal.propose (best
of the L! cluster relabellings, since the two runs may number clusters
differently; the whole-image slot is equal by construction).

With --masks it instead times region_masks.compute_region_masks (jitted, vmapped
over a batch of --batch sample images resized to width x height: hesaff points
(jax ones without pyhesaff), N_max = 4000 salient points by the alpha of a
random-weight VGG19, padded, L = 3 global fast k-means clusters) with the dense
hulls of hulls.py ("new": hull-candidate packing + bisection) against the
former Andrew's monotone chain ("scan", the lax.scan baseline kept below as
`_scan_rasterise_hulls`, swapped in for hulls.rasterise_hulls while its jit
traces), and against the VGG19 forward of the same images (one image per call,
to bound memory); each round times the four once, medians over --repeats
rounds; "fallback" is "new" forced onto its every-point branch (its cost when
the candidates do not fit). It also prints the sequential loop steps of each
jaxpr (what costs launch latency on an accelerator), the packed hull candidates
per image, and the share of mask cells on which the two agree.

CPU (forces the CPU platform):
  PYTHONPATH=. python3 benchmarks/regions_speed.py
Accelerator (the default JAX backend, e.g. a GPU):
  PYTHONPATH=. python3 benchmarks/regions_speed.py --device
Masks, old against new (about 10 minutes on 2 CPU cores, mostly VGG19):
  PYTHONPATH=. python3 benchmarks/regions_speed.py --masks
Backend agreement on data/samples (about 8 minutes on 2 CPU cores):
  PYTHONPATH=. python3 benchmarks/regions_speed.py --agreement
"""

import functools
import itertools
import pathlib
import time
from unittest import mock

from absl import app
from absl import flags
from absl import logging
import cv2
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_bool(
  'device',
  False,
  'Run on the default JAX backend (GPU/TPU) instead of forcing the CPU.',
)
flags.DEFINE_integer('width', 1024, 'Image width W_I.')
flags.DEFINE_integer('height', 768, 'Image height H_I.')
flags.DEFINE_integer('repeats', 3, 'Timed rounds (median ratio reported).')
flags.DEFINE_integer('n_max', 4000, 'N_max of the salient point rule.')
flags.DEFINE_bool(
  'agreement',
  False,
  'Compare the hesaff and jax backends '
  'on the bundled samples instead of timing.',
)
flags.DEFINE_bool(
  'masks',
  False,
  'Time compute_region_masks: dense '
  'bisection hulls against the monotone-chain scan baseline.',
)
flags.DEFINE_integer('batch', 8, '--masks: images in the batch.')
flags.DEFINE_string(
  'image',
  str(
    pathlib.Path(__file__).parents[1] / 'data' / 'samples' / 'ukbench00000.jpg'
  ),
  'Image resized to width x height.',
)


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
  from regagg_jax.features import images  # pylint: disable=g-import-not-at-top
  from regagg_jax.regions import proposal  # pylint: disable=g-import-not-at-top
  from regagg_jax.features import vgg19  # pylint: disable=g-import-not-at-top
  from regagg_jax.features import weights  # pylint: disable=g-import-not-at-top
  from regagg_jax.features import weighting  # pylint: disable=g-import-not-at-top

  variables = weights.load_params()
  shares, ious = [], []
  for path in samples:
    image = images.load_image(path)
    features = vgg19.features(variables, vgg19.preprocess(image[None]))[0]
    alpha = weighting.spatial_weights(features)
    found = {}
    for backend in ('jax', 'hesaff'):
      points, shapes, valid = (
        np.asarray(a) for a in proposal.detect_shapes(image, backend=backend)
      )
      sigma = np.sqrt(np.abs(np.linalg.det(shapes[valid])))
      masks, _ = proposal.propose(
        image,
        alpha,
        options=proposal.RegionOptions(
          backend=backend, num_clusters=num_clusters
        ),
      )
      found[backend] = points[valid], sigma, np.asarray(masks)
    (ours, our_sigma, our_masks), (theirs, their_sigma, their_masks) = (
      found['jax'],
      found['hesaff'],
    )
    near = np.linalg.norm(ours[:, None] - theirs[None], axis=-1) <= 2.0
    matched = np.abs(np.log2(our_sigma[:, None] / their_sigma[None])) <= 0.5
    shares.append(np.mean(np.any(near & matched, axis=1)))
    best = 0.0
    for order in itertools.permutations(range(num_clusters)):
      other = [
        sum(1 << order[l] for l in range(num_clusters) if m >> l & 1)
        for m in range(1, 2**num_clusters)
      ]
      best = max(
        best,
        np.mean(
          [
            _mask_iou(our_masks[m - 1], their_masks[q - 1])
            for m, q in zip(range(1, 2**num_clusters), other)
          ]
        ),
      )
    ious.append(best)
    logging.info('%s: share %.3f, IoU %.3f', path, shares[-1], best)
  print(
    f'{len(samples)} images: share of jax points within 2 px of a hesaff '
    f'point at matched scale {np.mean(shares):.3f}; mean IoU of the '
    f'cluster-subset masks {np.mean(ious):.3f} (median '
    f'{np.median(ious):.3f}, min {np.min(ious):.3f})'
  )


def _cross(origin, a, b):
  return (a[0] - origin[0]) * (b[1] - origin[1]) - (a[1] - origin[1]) * (
    b[0] - origin[0]
  )


def _build_chain(points, members):
  """Baseline: one monotone chain (CCW turns kept) as a lax.scan over P."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def push(carry, inputs):
    stack, count = carry
    point, member = inputs

    def must_pop(count):
      return (
        member
        & (count >= 2)
        & (_cross(stack[count - 2], stack[count - 1], point) <= 0)
      )

    count = jax.lax.while_loop(must_pop, lambda count: count - 1, count)
    stack = stack.at[count].set(jnp.where(member, point, stack[count]))
    return (stack, count + member.astype(jnp.int32)), None

  start = (jnp.zeros_like(points), jnp.array(0, jnp.int32))
  (stack, count), _ = jax.lax.scan(push, start, (points, members))
  return stack, count


def _chain_height(chain, count, columns, pick):
  """Baseline: height of a monotone chain at x = columns (W,)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  start, end = chain[:-1], chain[1:]
  edge_valid = jnp.arange(chain.shape[0] - 1) < count - 1
  low_x = jnp.minimum(start[:, 0], end[:, 0])
  high_x = jnp.maximum(start[:, 0], end[:, 0])
  usable = edge_valid & (high_x > low_x)
  x = columns[:, None]
  covers = usable[None, :] & (low_x[None, :] <= x) & (x <= high_x[None, :])
  fraction = (x - start[None, :, 0]) / jnp.where(
    usable, end[:, 0] - start[:, 0], 1.0
  )[None, :]
  heights = start[None, :, 1] + fraction * (end[:, 1] - start[:, 1])[None, :]
  fill = -jnp.inf if pick is jnp.max else jnp.inf
  return pick(jnp.where(covers, heights, fill), axis=1), jnp.any(covers, axis=1)


def _scan_rasterise_one(
  sorted_points, members, centres_x, centres_y, tolerance
):
  """Baseline: bool (H, W) cells inside the hull of the members, its area."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  lower, lower_count = _build_chain(sorted_points, members)
  upper, upper_count = _build_chain(sorted_points[::-1], members[::-1])
  member_x = jnp.where(members, sorted_points[:, 0], jnp.nan)
  member_y = jnp.where(members, sorted_points[:, 1], jnp.nan)
  min_x, max_x = jnp.nanmin(member_x), jnp.nanmax(member_x)
  columns = jnp.clip(centres_x, min_x, max_x)
  bottom, covered = _chain_height(lower, lower_count, columns, jnp.max)
  top, _ = _chain_height(upper, upper_count, columns, jnp.min)
  bottom = jnp.where(covered, bottom, jnp.nanmin(member_y))
  top = jnp.where(covered, top, jnp.nanmax(member_y))
  in_columns = (centres_x >= min_x - tolerance) & (
    centres_x <= max_x + tolerance
  )
  mask = (
    in_columns[None, :]
    & (centres_y[:, None] >= bottom[None, :] - tolerance)
    & (centres_y[:, None] <= top[None, :] + tolerance)
  )
  mask &= jnp.any(members)

  def shoelace(chain, count):
    edge = jnp.arange(chain.shape[0] - 1) < count - 1
    return jnp.sum(
      jnp.where(edge, _cross(jnp.zeros(2), chain[:-1].T, chain[1:].T), 0.0)
    )

  area = 0.5 * (shoelace(lower, lower_count) + shoelace(upper, upper_count))
  return mask, jnp.abs(area)


def _scan_rasterise_hulls(
  points, members, grid_size, image_size, *, grid_shape, tolerance=1e-3
):
  """Measured baseline only: hulls.rasterise_hulls before the dense rewrite.

  Andrew's monotone chain as a lax.scan over the P sorted points (a
  while_loop pops inside), vmapped over the subsets, twice (lower and upper
  chain); kept here, verbatim, so that the benchmark can compare against it.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  grid = jnp.asarray(grid_size, jnp.float32)
  cell = jnp.asarray(image_size, jnp.float32) / grid
  rows = jnp.arange(grid_shape[0], dtype=jnp.float32)
  columns = jnp.arange(grid_shape[1], dtype=jnp.float32)
  order = jnp.lexsort((points[:, 1], points[:, 0]))
  masks, areas = jax.vmap(
    _scan_rasterise_one, in_axes=(None, 0, None, None, None)
  )(
    points[order],
    members[:, order],
    (columns + 0.5) * cell[1],
    (rows + 0.5) * cell[0],
    tolerance,
  )
  inside = (rows[:, None] < grid[0]) & (columns[None, :] < grid[1])
  return masks & inside[None], areas


def _loop_steps(jaxpr):
  """Sequential loop iterations of a jaxpr: scan lengths (nested ones
  multiplied) and the number of while loops (data-dependent trip counts)."""
  steps, whiles = 0, 0
  for equation in jaxpr.eqns:
    inner = [
      _loop_steps(getattr(value, 'jaxpr', value))
      for values in equation.params.values()
      for value in (values if isinstance(values, (tuple, list)) else [values])
      if hasattr(getattr(value, 'jaxpr', value), 'eqns')
    ]
    if equation.primitive.name == 'cond':  # one branch runs
      inner_steps, inner_whiles = max(inner, default=(0, 0))
    else:
      inner_steps, inner_whiles = (
        sum(found[0] for found in inner),
        sum(found[1] for found in inner),
      )
    if equation.primitive.name == 'scan':
      steps += equation.params['length'] * max(inner_steps, 1)
    else:
      steps += inner_steps
    whiles += inner_whiles + (equation.primitive.name == 'while')
  return steps, whiles


def measure_masks(paths):
  """Prints compute_region_masks times: new, scan baseline, VGG19."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from benchmarks import timing  # pylint: disable=g-import-not-at-top
  from regagg_jax.regions import clustering  # pylint: disable=g-import-not-at-top
  from regagg_jax.regions import hulls  # pylint: disable=g-import-not-at-top
  from regagg_jax.features import images  # pylint: disable=g-import-not-at-top
  from regagg_jax.regions import keypoints  # pylint: disable=g-import-not-at-top
  from regagg_jax.regions import proposal  # pylint: disable=g-import-not-at-top
  from regagg_jax.regions import region_masks  # pylint: disable=g-import-not-at-top
  from regagg_jax.features import vgg19  # pylint: disable=g-import-not-at-top
  from regagg_jax.features import weighting  # pylint: disable=g-import-not-at-top

  variables = vgg19.init_params(jax.random.PRNGKey(0))
  forward = jax.jit(vgg19.features)
  image_shape = (FLAGS.height, FLAGS.width)
  batch, all_points, all_labels = [], [], []
  for path in paths:
    image = cv2.resize(
      images.load_image(path),
      (FLAGS.width, FLAGS.height),
      interpolation=cv2.INTER_CUBIC,
    )
    batch.append(vgg19.preprocess(image[None]))
    alpha = weighting.spatial_weights(forward(variables, batch[-1])[0])
    try:
      points, valid = proposal.detect(image, backend='hesaff')
    except ImportError:
      points, valid = proposal.detect(jnp.asarray(image), backend='jax')
    points, valid = keypoints.select_salient(
      points, valid, alpha, image_shape, n_max=FLAGS.n_max
    )
    labels, _ = clustering.global_fast_kmeans(points, valid)
    all_points.append(points)
    all_labels.append(jnp.where(valid, labels, -1))
  points, labels = jnp.stack(all_points), jnp.stack(all_labels)
  cells = jnp.ones((len(paths),) + alpha.shape, bool)
  sizes = jnp.asarray([image_shape] * len(paths))
  new = jax.jit(jax.vmap(region_masks.compute_region_masks))
  scan = jax.jit(jax.vmap(region_masks.compute_region_masks))
  with mock.patch.object(hulls, 'rasterise_hulls', _scan_rasterise_hulls):
    scan_masks, scan_valid = scan(points, labels, cells, sizes)  # traces
    scan_jaxpr = jax.make_jaxpr(  # a fresh function: no trace cache hit
      lambda *arrays: region_masks.compute_region_masks(*arrays)
    )(points[0], labels[0], cells[0], sizes[0]).jaxpr
  new_masks, new_valid = new(points, labels, cells, sizes)
  fallback = jax.jit(jax.vmap(region_masks.compute_region_masks))
  with mock.patch.object(
    hulls,
    '_compact_candidates',
    functools.partial(hulls._compact_candidates, max_candidates=1),
  ):  # pylint: disable=protected-access
    fallback_masks, _ = fallback(points, labels, cells, sizes)  # traces
  new_jaxpr = jax.make_jaxpr(
    lambda *arrays: region_masks.compute_region_masks(*arrays)
  )(points[0], labels[0], cells[0], sizes[0]).jaxpr
  stages = {
    'vgg19': lambda: [forward(variables, image) for image in batch],
    'new': lambda: new(points, labels, cells, sizes),
    'scan': lambda: scan(points, labels, cells, sizes),
    'fallback': lambda: fallback(points, labels, cells, sizes),
  }
  _, _, seconds = timing.interleaved(stages, FLAGS.repeats)
  median = {stage: np.median(times) for stage, times in seconds.items()}
  print(
    f'{len(paths)} images {FLAGS.width}x{FLAGS.height}, grid '
    f'{alpha.shape[1]}x{alpha.shape[0]}, P = {points.shape[1]} '
    f'({int(np.sum(labels >= 0))} valid points), L = 3, device '
    f'{jax.devices()[0].platform}, median of {FLAGS.repeats} rounds'
  )
  for stage in stages:
    print(
      f'  {stage:8s} {1e3 * median[stage]:10.1f} ms   '
      f'{median[stage] / median["vgg19"]:7.4f} x vgg19'
    )
  print(
    f'  new / scan time: {median["new"] / median["scan"]:.2f}; fallback '
    f'(new forced onto its every-point branch) / scan: '
    f'{median["fallback"] / median["scan"]:.2f}'
  )
  for name, jaxpr in (('scan', scan_jaxpr), ('new', new_jaxpr)):
    steps, whiles = _loop_steps(jaxpr)
    print(
      f'  {name:6s} sequential loop steps per image: {steps} '
      f'(+ {whiles} data-dependent while loops inside)'
    )
  members = jax.vmap(region_masks.subset_members)(labels)
  polygons = jax.vmap(hulls._support_polygon)(points, members)  # pylint: disable=protected-access
  _, packed, fits = jax.vmap(hulls._compact_candidates)(  # pylint: disable=protected-access
    points, members, polygons
  )
  counts = np.asarray(jnp.sum(jnp.any(packed, axis=1), axis=-1))
  print(
    f'  hull candidates per image: {counts} of {packed.shape[-1]} slots '
    f'(all fit: {bool(jnp.all(fits))})'
  )
  agree = np.mean(np.asarray(new_masks) == np.asarray(scan_masks))
  agree_fallback = np.mean(np.asarray(fallback_masks) == np.asarray(new_masks))
  print(
    f'  mask cells equal (new vs scan): {agree:.6f}, (fallback vs new): '
    f'{agree_fallback:.6f}; valid slots equal (new vs scan): '
    f'{np.mean(np.asarray(new_valid) == np.asarray(scan_valid)):.4f}'
  )


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top

  if not FLAGS.device:
    jax.config.update('jax_platforms', 'cpu')
  if FLAGS.agreement:
    measure_agreement(sorted(pathlib.Path(FLAGS.image).parent.glob('*.jpg')))
    return
  if FLAGS.masks:
    measure_masks(
      sorted(pathlib.Path(FLAGS.image).parent.glob('*.jpg'))[: FLAGS.batch]
    )
    return
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from regagg_jax.regions import clustering  # pylint: disable=g-import-not-at-top
  from regagg_jax.regions import hessian_affine  # pylint: disable=g-import-not-at-top
  from regagg_jax.regions import keypoints  # pylint: disable=g-import-not-at-top
  from regagg_jax.regions import proposal  # pylint: disable=g-import-not-at-top
  from regagg_jax.regions import region_masks  # pylint: disable=g-import-not-at-top
  from regagg_jax.features import vgg19  # pylint: disable=g-import-not-at-top
  from regagg_jax.features import weighting  # pylint: disable=g-import-not-at-top

  logging.info('devices: %s', jax.devices())
  image = cv2.cvtColor(cv2.imread(FLAGS.image), cv2.COLOR_BGR2RGB)
  image = cv2.resize(
    image, (FLAGS.width, FLAGS.height), interpolation=cv2.INTER_CUBIC
  )
  image_shape = (FLAGS.height, FLAGS.width)
  variables = vgg19.init_params(jax.random.PRNGKey(0))
  batch = vgg19.preprocess(image[None])
  alpha = weighting.spatial_weights(vgg19.features(variables, batch)[0])
  grid = jnp.asarray(alpha.shape)
  size = jnp.asarray(image_shape)
  device_image = jnp.asarray(image)
  try:
    points, valid = proposal.detect(image, backend='hesaff')
    has_hesaff = True
  except ImportError:
    points, valid = proposal.detect(device_image, backend='jax')
    has_hesaff = False
  salient, salient_valid = keypoints.select_salient(
    points, valid, alpha, image_shape, n_max=FLAGS.n_max
  )
  nearest = jnp.sum((salient - jnp.mean(salient, axis=0)) ** 2, axis=1)
  labels, _ = clustering.global_fast_kmeans(salient, salient_valid)
  bound = jax.jit(clustering.compute_bounds)
  masks = jax.jit(region_masks.compute_region_masks)
  detect_salient = jax.jit(
    functools.partial(
      keypoints.detect_salient, padded_shape=image_shape, n_max=FLAGS.n_max
    )
  )
  cells = jnp.ones(alpha.shape, bool)
  stages = {
    'vgg19': lambda: vgg19.features(variables, batch),
    'jax': lambda: proposal.detect(device_image, backend='jax'),
    'candidates': lambda: hessian_affine.find_candidates(device_image),
    'salient': lambda: detect_salient(device_image, alpha, grid, size),
    'selection': lambda: keypoints.select_salient(
      points, valid, alpha, image_shape, n_max=FLAGS.n_max
    ),
    'bound': lambda: bound(salient, salient_valid, nearest),
    'kmeans': lambda: clustering.global_fast_kmeans(salient, salient_valid),
    'masks': lambda: masks(salient, labels, cells, size),
    'proposal': lambda: proposal.propose_batch(
      device_image[None],
      alpha[None],
      cells[None],
      size[None],
      options=proposal.RegionOptions(backend='jax', n_max=FLAGS.n_max),
    ),
  }
  if has_hesaff:
    stages['hesaff'] = lambda: proposal.detect(image, backend='hesaff')
  for function in stages.values():  # compile
    _seconds(function)
  ratios = {stage: [] for stage in stages}
  seconds = {stage: [] for stage in stages}
  for _ in range(FLAGS.repeats):
    before = _seconds(stages['vgg19'])
    for stage, function in stages.items():
      seconds[stage].append(before if stage == 'vgg19' else _seconds(function))
    baseline = 0.5 * (before + _seconds(stages['vgg19']))
    for stage in stages:
      ratios[stage].append(seconds[stage][-1] / baseline)
  print(
    f'{FLAGS.width}x{FLAGS.height}, grid {alpha.shape[1]}x{alpha.shape[0]}'
    f', {int(np.sum(valid))} {"hesaff" if has_hesaff else "jax"} points, '
    f'N_max {FLAGS.n_max}, {int(np.sum(salient_valid))} salient points, '
    f'device {jax.devices()[0].platform}, median of {FLAGS.repeats} rounds'
  )
  for stage in stages:
    print(
      f'  {stage:10s} {1e3 * np.median(seconds[stage]):10.1f} ms   '
      f'{np.median(ratios[stage]):7.3f} x vgg19'
    )
  if has_hesaff:
    shared = sum(
      np.median(ratios[stage]) for stage in ('selection', 'kmeans', 'masks')
    )
    print(
      f'  proposal with hesaff (host + selection + kmeans + masks) '
      f'{np.median(ratios["hesaff"]) + shared:7.3f} x vgg19'
    )


if __name__ == '__main__':
  app.run(main)
