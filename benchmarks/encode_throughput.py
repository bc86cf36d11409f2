"""Encoder throughput: the full encoder versus the bare VGG19 forward.

Default (CPU, forced): images/s of batch_encoder.encode_batch ('o2' with a U^1,
the jax detector backend, whitening to D included: VGG19 -> alpha, beta ->
detector -> selection -> k-means -> masks -> eq. 4-6) and of the bare
vgg19.features on the same padded batch of --batch 1024x768 images (bundled
samples resized), same dtype, real weights, in one run: the median of
--repeats interleaved runs after a compiling warm-up, and the ratio full /
bare (issue 6 target: <= 1.15).

  PYTHONPATH=. python3 benchmarks/encode_throughput.py
  PYTHONPATH=. python3 benchmarks/encode_throughput.py --mix  # compilations
  PYTHONPATH=. python3 benchmarks/encode_throughput.py --host_pipeline --batch=2
  PYTHONPATH=. python3 benchmarks/encode_throughput.py --stages  # per stage

--mix encodes a synthetic Oxford-like mix of shapes (60 % 1024x768, 30 %
768x1024, 10 % long tail with the longer side <= 1024) through
file_encoder.encode_rows, images written to a temporary directory at --mix_scale
of their size with tiny random VGG19 widths (the count depends on shapes
only), and prints the compilations (resources.compilations()) against the
shape buckets (images.bucket_shape) at that scale and at full scale.

--host_pipeline times file_encoder.encode_rows end to end (JPEG decoding on
--threads host threads, --prefetch batches ahead) on --pipeline_images
1024x768 files against encode_batch alone on the same, already decoded
batches: a ratio near 1 means the device never waits for the host.

--stages also times each stage (VGG19, alpha / beta, detection + N_max
selection, k-means, hull masks, eq. 4-5 pooling, eq. 6 whitening) as its
own jit on the same batch, with its share of their sum.

--log_method=eigh runs eq. (5) as one batched Gram matmul + eigh instead of
QR + SVD (pooling.LOG_METHODS; both are tested against float64): on a GPU,
run --device --stages with each.

--device (a GPU / TPU; exits with an error when JAX sees only a CPU) prints
images/s of the bare and full encoder for float32 and bfloat16 VGG19 at each
of --batches, largest first, the host pipeline (bfloat16) and, with
--stages, the float32 stages at the largest. One command on a machine with
the repository (no network needed) and a float16 copy of the weights made
here (40 MB: it travels where the 74 MB checkpoint does not):

  PYTHONPATH=. python3 benchmarks/encode_throughput.py --export_weights=weights/.vgg19_float16.npz
  PYTHONPATH=. python3 benchmarks/encode_throughput.py --device --stages \
      --weights=weights/.vgg19_float16.npz
"""

import functools
import pathlib
import statistics
import tempfile
import time

from absl import app
from absl import flags
import cv2
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from regagg_jax.regions import clustering
from regagg_jax.encoding import batch_encoder
from regagg_jax.encoding import file_encoder
from regagg_jax.encoding import resources
from regagg_jax.features import images
from regagg_jax.regions import keypoints
from regagg_jax.aggregation import pca
from regagg_jax.aggregation import method_table
from regagg_jax.regions import proposal
from regagg_jax.regions import region_masks
from regagg_jax.features import vgg19
from regagg_jax.features import weights
from regagg_jax.features import weighting

_DEVICE = flags.DEFINE_bool(
  'device',
  False,
  'Measure on the default JAX accelerator (float32 and bfloat16).',
)
_MIX = flags.DEFINE_bool(
  'mix', False, 'Count compilations for an Oxford-like mix of shapes.'
)
_STAGES = flags.DEFINE_bool(
  'stages', False, 'Also time each stage of the encoder as its own jit.'
)
_HOST_PIPELINE = flags.DEFINE_bool(
  'host_pipeline',
  False,
  'Time encode_rows end to end against encode_batch alone.',
)
_BATCH = flags.DEFINE_integer('batch', 2, 'Images per batch (CPU).')
_BATCHES = flags.DEFINE_list('batches', ['8', '16'], 'Batch sizes (--device).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs per variant.')
_HEIGHT = flags.DEFINE_integer('height', 768, 'Image height H_I.')
_WIDTH = flags.DEFINE_integer('width', 1024, 'Image width W_I.')
_WEIGHTS = flags.DEFINE_string(
  'weights',
  None,
  'VGG19 weights: a float16 '
  '.npz from --export_weights, or a path for '
  'weights.load_params; default: the cached ones.',
)
_EXPORT = flags.DEFINE_string(
  'export_weights',
  None,
  'Write the cached weights as a float16 .npz here and exit.',
)
_MIX_IMAGES = flags.DEFINE_integer('mix_images', 100, 'Images in the mix.')
_MIX_SCALE = flags.DEFINE_float('mix_scale', 0.25, 'Scale of the mix images.')
_PIPELINE_IMAGES = flags.DEFINE_integer(
  'pipeline_images', 64, 'Files for --host_pipeline.'
)
_THREADS = flags.DEFINE_integer('threads', 4, 'Decoding threads.')
_PREFETCH = flags.DEFINE_integer('prefetch', 2, 'Batches decoded ahead.')
_LOG_METHOD = flags.DEFINE_enum(
  'log_method',
  'qr',
  ['qr', 'eigh'],
  'eq. (5) eigen-solver (pooling.LOG_METHODS).',
)

_SAMPLES = pathlib.Path(__file__).resolve().parents[1] / 'data' / 'samples'
_REGIONS = proposal.RegionOptions(
  backend='jax', n_max=4000, n_min=300, num_clusters=3, min_cells=1
)  # Sec. 5
_K_PRIME, _DIM = 128, 512  # K' of eq. (4), D of eq. (6)
_TINY_WIDTHS = (4, 8, 8, 16, 16)


def _pooling(log_method=None):
  """Pooling options; log_method defaults to --log_method."""
  return method_table.PoolingOptions(
    gem_power=3.0,
    offdiag_scale=1.0,
    rmac_levels=3,
    log_method=log_method or _LOG_METHOD.value,
  )


def _load_weights():
  if _WEIGHTS.value and _WEIGHTS.value.endswith('.npz'):
    with np.load(_WEIGHTS.value) as arrays:
      params = {}
      for key, value in arrays.items():
        layer, name = key.split('/')
        params.setdefault(layer, {})[name] = jnp.asarray(value, jnp.float32)
    return {'params': params}
  return weights.load_params(_WEIGHTS.value)


def _export_weights(path):
  arrays = {
    f'{layer}/{name}': np.asarray(value, np.float16)
    for layer, values in weights.load_params()['params'].items()
    for name, value in values.items()
  }
  np.savez(path, **arrays)
  print(f'wrote {len(arrays)} float16 arrays to {path}')


def _orthonormal(rng, rows, columns):
  return np.linalg.qr(rng.standard_normal((rows, columns)))[0].astype(
    np.float32
  )


def _projections(channels, k_prime=_K_PRIME, dim=_DIM):
  """Random U^1 (K, K') of eq. (4) and whitening (K'(K'+1)/2, D) of eq. (6):
  the speed does not depend on their values."""
  rng = np.random.default_rng(0)
  reduction = pca.PCAParams(
    np.zeros(channels, np.float32),
    _orthonormal(rng, channels, k_prime),
    np.ones(k_prime, np.float32),
  )
  pooled = k_prime * (k_prime + 1) // 2
  whitening = pca.PCAParams(
    np.zeros(pooled, np.float32),
    _orthonormal(rng, pooled, dim),
    rng.uniform(1.0, 10.0, dim).astype(np.float32),
  )
  return reduction, whitening


def _pictures(count, height, width):
  """count bundled samples resized to (height, width), cycling."""
  paths = sorted(_SAMPLES.glob('ukbench*.jpg'))
  return [
    cv2.resize(
      images.load_image(paths[i % len(paths)]),
      (width, height),
      interpolation=cv2.INTER_CUBIC,
    )
    for i in range(count)
  ]


def _padded(pictures):
  """uint8 (B, H_I, W_I, 3), int32 (B, 2), bool (B, H, W) of one bucket."""
  height, width = images.bucket_shape(*pictures[0].shape[:2])
  rgb, cells = images.pad_batch(pictures, height=height, width=width)
  sizes = np.array([p.shape[:2] for p in pictures], np.int32)
  return rgb, sizes, cells


def _runners(variables, projections, batch, dtype, log_method):
  """{'bare': run, 'full': run} on one padded batch, each blocking."""
  rgb, sizes, cells = batch
  reduction, whitening = projections

  @jax.jit
  def bare(variables, rgb, sizes):  # the VGG19 forward of encode_batch
    return vgg19.features(variables, vgg19.preprocess(rgb), sizes, dtype=dtype)

  return {
    'bare': lambda: bare(variables, rgb, sizes).block_until_ready(),
    'full': lambda: jax.block_until_ready(
      batch_encoder.encode_batch(
        variables,
        rgb,
        sizes,
        cells,
        reduction,
        whitening,
        method='o2',
        dtype=dtype,
        region_options=_REGIONS,
        pooling_options=_pooling(log_method),
      )
    ),
  }


def _median_times(runners):
  """Compiles each runner, then the median of --repeats interleaved runs."""
  _, compile_s, times = timing.interleaved(runners, _REPEATS.value)
  return {
    name: statistics.median(values) for name, values in times.items()
  }, compile_s


def _print_pair(label, batch_size, medians, compile_s):
  """Prints the pair and returns it as a dict for --json."""
  for name in ('bare', 'full'):
    print(
      f'  {label} batch {batch_size:3d} {name}: '
      f'{batch_size / medians[name]:8.2f} images/s '
      f'({medians[name] * 1e3:9.1f} ms/batch; first call incl. compile '
      f'{compile_s[name]:.1f} s)'
    )
  ratio = medians['full'] / medians['bare']
  print(
    f'  {label} batch {batch_size:3d} ratio full/bare = '
    f'{ratio:.3f} (target <= 1.15)'
  )
  return {
    'batch': batch_size,
    **{f'{name}_images_per_s': batch_size / medians[name] for name in medians},
    **{f'{name}_ms_per_batch': medians[name] * 1e3 for name in medians},
    **{f'{name}_first_call_s': compile_s[name] for name in compile_s},
    'full_over_bare': ratio,
  }


def measure_pair(variables, projections, batch_size, dtype, log_method=None):
  """Prints images/s of the bare forward and the full encoder; returns them."""
  batch = _padded(_pictures(batch_size, _HEIGHT.value, _WIDTH.value))
  medians, compile_s = _median_times(
    _runners(variables, projections, batch, dtype, log_method)
  )
  return _print_pair(
    f'{dtype} {log_method or _LOG_METHOD.value}', batch_size, medians, compile_s
  )


def measure_host_pipeline(
  variables, projections, batch_size, dtype, log_method=None
):
  """encode_rows end to end vs encode_batch alone, same images and batches.

  Returns the figures as a dict for --json.
  """
  count = _PIPELINE_IMAGES.value
  pictures = _pictures(count, _HEIGHT.value, _WIDTH.value)
  reduction, whitening = projections
  with tempfile.TemporaryDirectory() as directory:
    paths = [f'{directory}/{i:05d}.jpg' for i in range(count)]
    for path, picture in zip(paths, pictures):
      cv2.imwrite(path, picture[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])

    def end_to_end(rows):
      return file_encoder.encode_rows(
        variables,
        paths,
        rows,
        'o2',
        region_options=_REGIONS,
        pooling_options=_pooling(log_method),
        reduction=reduction,
        whitening=whitening,
        batch_size=batch_size,
        dtype=dtype,
        num_threads=_THREADS.value,
        prefetch=_PREFETCH.value,
      )

    end_to_end(list(range(batch_size)))  # compiles
    start = time.perf_counter()
    end_to_end(list(range(count)))
    pipeline_s = time.perf_counter() - start
  batches = [
    _padded(pictures[i : i + batch_size])
    for i in range(0, count - batch_size + 1, batch_size)
  ]
  start = time.perf_counter()
  for rgb, sizes, cells in batches:  # dispatched back to back, as encode_rows
    outputs = batch_encoder.encode_batch(
      variables,
      rgb,
      sizes,
      cells,
      reduction,
      whitening,
      method='o2',
      dtype=dtype,
      region_options=_REGIONS,
      pooling_options=_pooling(log_method),
    )
  jax.block_until_ready(outputs)
  device_s = time.perf_counter() - start
  encoded = len(batches) * batch_size
  figures = {
    'batch': batch_size,
    'dtype': dtype,
    'log_method': log_method or _LOG_METHOD.value,
    'jpegs': count,
    'threads': _THREADS.value,
    'prefetch': _PREFETCH.value,
    'encode_rows_images_per_s': count / pipeline_s,
    'encode_batch_images_per_s': encoded / device_s,
    'end_to_end_over_device': (pipeline_s / count) / (device_s / encoded),
  }
  print(
    f'  host pipeline {dtype} batch {batch_size}: encode_rows '
    f'{count / pipeline_s:.2f} images/s ({count} JPEGs, {_THREADS.value} '
    f'threads, prefetch {_PREFETCH.value}); encode_batch alone '
    f'{encoded / device_s:.2f} images/s; ratio end-to-end/device = '
    f'{figures["end_to_end_over_device"]:.3f}'
  )
  return figures


def _median_call(function, *args):
  """(median seconds of function(*args) as _median_times, its output)."""
  medians, _ = _median_times(
    {'call': lambda: jax.block_until_ready(function(*args))}
  )
  return medians['call'], function(*args)


def measure_stages(variables, projections, batch_size, dtype, log_method=None):
  """Prints each stage of the encoder as its own jit: where the time goes.

  Returns {stage: milliseconds} for --json.
  """
  rgb, sizes, cells = _padded(
    _pictures(batch_size, _HEIGHT.value, _WIDTH.value)
  )
  reduction, whitening = projections
  grid = np.array([images.feature_shape(*size) for size in sizes], np.int32)
  clusters = _REGIONS.num_clusters
  seconds = {}
  seconds['vgg19'], features = _median_call(
    jax.jit(
      lambda v, x, s: vgg19.features(v, vgg19.preprocess(x), s, dtype=dtype)
    ),
    variables,
    rgb,
    sizes,
  )
  seconds['alpha, beta'], (alpha, beta) = _median_call(
    jax.jit(
      lambda f, c: (
        jax.vmap(weighting.spatial_weights)(f, c),  # eq. (1)
        jax.vmap(weighting.channel_weights)(f, c),
      )
    ),  # eq. (2)
    features,
    cells,
  )
  seconds['detect+select'], (points, valid) = _median_call(
    jax.jit(
      jax.vmap(
        functools.partial(
          keypoints.detect_salient,
          padded_shape=rgb.shape[1:3],
          n_max=_REGIONS.n_max,
          n_min=_REGIONS.n_min,
        )
      )
    ),
    rgb,
    alpha,
    grid,
    sizes,
  )
  seconds['kmeans'], (labels, _) = _median_call(
    jax.jit(
      jax.vmap(
        functools.partial(clustering.global_fast_kmeans, num_clusters=clusters)
      )
    ),
    points,
    valid,
  )
  seconds['masks'], (masks, region_valid) = _median_call(
    jax.jit(
      jax.vmap(
        functools.partial(
          region_masks.compute_region_masks,
          num_clusters=clusters,
          min_cells=_REGIONS.min_cells,
        )
      )
    ),
    points,
    labels,
    cells,
    sizes,
  )
  seconds['pool o2'], pooled = _median_call(
    jax.jit(
      jax.vmap(
        functools.partial(
          method_table.POOLING['o2'].pool,
          reduction=reduction,
          options=_pooling(log_method),
        )
      )
    ),  # eq. (4-5)
    features,
    alpha,
    beta,
    cells,
    masks,
    region_valid,
  )
  seconds['whitening'], _ = _median_call(
    jax.jit(pca.apply), whitening, pooled, region_valid
  )  # eq. (6)
  total = sum(seconds.values())
  print(
    f'  stages, {dtype} {log_method or _LOG_METHOD.value} batch '
    f'{batch_size}, each its own jit:'
  )
  for stage, value in seconds.items():
    print(f'    {stage:14s} {value * 1e3:9.1f} ms  {value / total:6.1%}')
  return {stage: value * 1e3 for stage, value in seconds.items()}


def _mix_shapes(count, rng):
  """Oxford-like (H_I, W_I): 60 % 768x1024, 30 % 1024x768, 10 % tail."""
  shapes = []
  for draw in rng.uniform(size=count):
    if draw < 0.6:
      shapes.append((768, 1024))
    elif draw < 0.9:
      shapes.append((1024, 768))
    else:
      longer = 1024 if rng.uniform() < 0.7 else int(rng.integers(500, 1025))
      shorter = int(longer * rng.uniform(0.5, 1.0))
      shapes.append(
        (longer, shorter) if rng.uniform() < 0.5 else (shorter, longer)
      )
  return shapes


def measure_mix(batch_size, variables=None, scale=None):
  """Compilations of encode_rows over the mix, against its shape buckets.

  Args:
    batch_size: images per batch.
    variables: VGG19 variables; None for tiny random widths (the count of
      compilations depends on the shapes only).
    scale: of the mix's shapes; None for --mix_scale.

  Returns:
    the figures as a dict for --json.
  """
  rng = np.random.default_rng(0)
  shapes = _mix_shapes(_MIX_IMAGES.value, rng)
  scale = _MIX_SCALE.value if scale is None else scale
  scaled = [
    (
      max(images.MIN_SIDE, round(h * scale)),
      max(images.MIN_SIDE, round(w * scale)),
    )
    for h, w in shapes
  ]
  sample = _pictures(1, 256, 256)[0]
  if variables is None:
    variables = vgg19.init_params(jax.random.PRNGKey(0), widths=_TINY_WIDTHS)
    reduction, whitening = _projections(_TINY_WIDTHS[-1], k_prime=8, dim=16)
    network = f'tiny VGG19 {_TINY_WIDTHS}'
  else:
    reduction, whitening = _projections(
      variables['params']['conv5_4']['kernel'].shape[-1]
    )
    network = 'VGG19'
  with tempfile.TemporaryDirectory() as directory:
    paths = [f'{directory}/{i:05d}.jpg' for i in range(len(scaled))]
    for path, (height, width) in zip(paths, scaled):
      cv2.imwrite(path, cv2.resize(sample, (width, height))[..., ::-1])
    encode = functools.partial(
      file_encoder.encode_rows,
      variables,
      paths,
      list(range(len(paths))),
      'o2',
      region_options=_REGIONS,
      pooling_options=_pooling(),
      reduction=reduction,
      whitening=whitening,
      batch_size=batch_size,
      num_threads=_THREADS.value,
      prefetch=_PREFETCH.value,
    )
    before = resources.compilations()
    start = time.perf_counter()
    store = encode()
    seconds = time.perf_counter() - start
    compilations = resources.compilations() - before
    start = time.perf_counter()
    encode()  # every shape compiled: steady state
    steady_seconds = time.perf_counter() - start
  buckets = {images.bucket_shape(*s) for s in scaled}
  full_buckets = {images.bucket_shape(*s) for s in shapes}
  batches = len(images.group_by_bucket(scaled, batch_size=batch_size))
  print(
    f'mix of {len(shapes)} images (60 % 1024x768, 30 % 768x1024, 10 % '
    f'tail; {len(set(shapes))} distinct shapes) at scale {scale}, batch '
    f'{batch_size}, {network}: {len(store.descriptors)} '
    f'encoded in {seconds:.1f} s (compilations included), again in '
    f'{steady_seconds:.1f} s ({len(shapes) / steady_seconds:.2f} images/s)'
  )
  print(
    f'  compilations {compilations}, shape buckets {len(buckets)} at '
    f'this scale ({batches} batches), {len(full_buckets)} at full scale '
    f'(multiple {images.BUCKET_MULTIPLE} px): '
    f'{sorted(full_buckets)}'
  )
  return {
    'images': len(shapes),
    'scale': scale,
    'batch': batch_size,
    'network': network,
    'compilations': compilations,
    'shape_buckets': len(buckets),
    'batches': batches,
    'seconds_with_compilation': seconds,
    'images_per_s_with_compilation': len(shapes) / seconds,
    'images_per_s_compiled': len(shapes) / steady_seconds,
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if _EXPORT.value:
    _export_weights(_EXPORT.value)
    return
  if not _DEVICE.value:
    jax.config.update('jax_platforms', 'cpu')
    batch_encoder.limit_lapack_threads(1)
  elif jax.default_backend() == 'cpu':
    raise app.UsageError(
      f'--device needs a GPU or TPU, but JAX '
      f'{jax.__version__} sees only {jax.devices()}'
    )
  if _MIX.value:
    measure_mix(_BATCH.value)
    return
  variables = jax.device_put(_load_weights())
  projections = _projections(variables['params']['conv5_4']['kernel'].shape[-1])
  print(
    f'jax {jax.__version__}, {jax.devices()[0].device_kind}, '
    f"{_WIDTH.value}x{_HEIGHT.value} (W x H), o2 K'={_K_PRIME} "
    f'D={_DIM}, jax detector, median of {_REPEATS.value}'
  )
  if not _DEVICE.value:
    if _HOST_PIPELINE.value:
      measure_host_pipeline(variables, projections, _BATCH.value, 'float32')
    else:
      measure_pair(variables, projections, _BATCH.value, 'float32')
    if _STAGES.value:
      measure_stages(variables, projections, _BATCH.value, 'float32')
    return
  batches = sorted(map(int, _BATCHES.value), reverse=True)
  for batch_size in batches:  # largest first, then the host pipeline at it
    for dtype in ('float32', 'bfloat16'):
      measure_pair(variables, projections, batch_size, dtype)
    if batch_size == batches[0]:
      measure_host_pipeline(variables, projections, batch_size, 'bfloat16')
      if _STAGES.value:
        measure_stages(variables, projections, batch_size, 'float32')


if __name__ == '__main__':
  app.run(main)
