"""Region index search at scale vs brute-force eq. (7), measured in one run.

  PYTHONPATH=. python3 benchmarks/search_scale.py --num_images=20000  # ~5 min
  PYTHONPATH=. python3 benchmarks/search_scale.py --num_images=1000000 \
      --small_images=1000000 --kinds=ivfpq --pq_m=256 --pq_nbits=4 \
      --fast_scan --coarse=hnsw --train_size=80000 --num_queries=50 \
      --fresh_queries=10 \
      --settings=64:1500:300,64:1200:200,64:1000:200,32:1000:200
      # 2026-11-27, idle 2-core CPU: 10.4 min wall, peak RSS 11.9 GiB. 1M
      # images (7.86M vectors, nlist 2048), brute force 870 ms/query:
      # recall@100 0.970 at 43.6x, 0.961 at 57.7x, 0.953 at 63.3x, 0.927 at
      # 76.1x: the goal (>= 0.95 at >= 20x) is met with exact re-scoring
      # (index_search.search rescore=True). Without it, 8-bit IVF-PQ
      # reached 0.894 at 12.4x (m=128) and 0.516 at 20.2x (m=64).

A simulated collection of N DISTINCT images x M regions x D is generated on
the fly (never written to disk) from REAL region descriptors: the real VGG19
runs once on the 56 bundled UKBench sample images (384 px, conv5_4 maps
cached in --maps_cache) and a bank of --bank regions per sample image is
pooled with eq. (9) (alpha-weighted sum over the cells of a random box, or a
union of two boxes, times beta; eq. 1-2; region 0 is the whole image).
Whitening (eq. 6, D = --dim) is fitted on the bank of the first
--whiten_groups UKBench groups (group = image // 4) and applied to the other
samples, the only ones used below (whitening fitted on the images it is
applied to makes them, same objects included, almost orthogonal: median
same-group eq. 7 score 0.22 instead of 0.78).

A simulated image mixes `sources` distinct held-out sample images: region m
is l2(sum_s w_ms b_ms) plus noise of norm `noise` (a share `share` of it
common to the image's regions), l2-normalised; b_ms is a random whitened bank
region of source s (for the last region R_M, the whole-image region: R_M is a
mixture too, never shared), w_m ~ Dirichlet(`concentration`). --invalid of
the regions (never R_M) are invalid. The store is float16 (N x M x D x 2 B).

Calibration (printed as a table): the real eq. (7) scores are computed
between --calibration_views draws of M real regions of each held-out sample
image: different-identity = pairs of different UKBench groups, same-identity
= different images of one group. (sources, concentration, noise, share) is
the grid point (--grid_*) whose different-identity quantiles 10/50/90/99 %
among --calibration_images simulated images are closest (max abs difference)
to the real ones; then the range (low, high) of the perturbed queries' noise
norm ~ U(low, high) is the grid point whose query-to-source quantiles are
closest to the real same-group ones. Only the real score distributions are
fitted; no index is looked at. The table also shows the (unfitted) cosine
between regions of one image, real vs simulated.

Queries: --num_queries perturbed views of database images (that noise on
every region, 1-2 regions dropped) and --fresh_queries new simulated images.

For each scale (N, and --small_images for the kinds too slow to build at N:
'flat' and 'hnsw'), brute force is `similarity.image_similarity` (eq. 7) of
all queries at once over the float16 store, cast to float32 in chunks; its
ranking is the exact reference. Each index kind reports: build seconds, index
bytes (faiss.serialize_index + id arrays), batched seconds per query
(throughput), the median single-query latency, recall@100 (|top-100 approx
& top-100 exact| / 100, mean over queries) and the speed-up over brute force
per query (both measured in this run).
"""

import os
import pathlib
import time

from absl import app
from absl import flags
from absl import logging
import faiss
import jax
import numpy as np

from regagg_jax.features import images
from regagg_jax.aggregation import pca
from regagg_jax.search import region_index
from regagg_jax.search import index_search
from regagg_jax.search import similarity
from regagg_jax.features import vgg19
from regagg_jax.features import weights
from regagg_jax.features import weighting

SAMPLES_DIR = pathlib.Path(__file__).resolve().parents[1] / 'data' / 'samples'
"""The 56 bundled sample images (384 px)."""

_NUM_IMAGES = flags.DEFINE_integer('num_images', 20000, 'N database images.')
_SMALL_IMAGES = flags.DEFINE_integer(
  'small_images',
  100000,
  "Scale of 'flat' and 'hnsw' (and a second "
  "'ivfpq') when N is larger: the first images of the same collection.",
)
_NUM_REGIONS = flags.DEFINE_integer('num_regions', 8, 'M regions per image.')
_DIM = flags.DEFINE_integer('dim', 512, 'D after whitening (<= K = 512).')
_KINDS = flags.DEFINE_list('kinds', ['flat', 'ivfpq', 'hnsw'], 'Index kinds.')
_NUM_QUERIES = flags.DEFINE_integer(
  'num_queries', 100, 'Perturbed database images as queries.'
)
_FRESH_QUERIES = flags.DEFINE_integer(
  'fresh_queries', 20, 'Newly simulated images as queries.'
)
_BANK = flags.DEFINE_integer('bank', 4096, 'Real regions pooled per sample.')
_INVALID = flags.DEFINE_float('invalid', 0.02, 'Share of invalid regions.')
_CALIBRATION_VIEWS = flags.DEFINE_integer(
  'calibration_views', 4, 'Real region draws per sample image (calibration).'
)
_CALIBRATION_IMAGES = flags.DEFINE_integer(
  'calibration_images', 400, 'Simulated images per calibration setting.'
)
_WHITEN_GROUPS = flags.DEFINE_integer(
  'whiten_groups',
  7,
  'UKBench groups (of 4 samples) whitening is fitted '
  'on; the other groups are the real images the simulation is made of.',
)
_GRID_SOURCES = flags.DEFINE_list(
  'grid_sources',
  ['2', '3', '4', '6'],
  'Sample images mixed per simulated image.',
)
_GRID_CONCENTRATION = flags.DEFINE_list(
  'grid_concentration',
  ['0.3', '1', '5'],
  'Dirichlet concentration of the mixture weights.',
)
_GRID_NOISE = flags.DEFINE_list(
  'grid_noise',
  ['0', '0.25', '0.5', '0.75', '1', '1.5', '2'],
  'Noise norm on simulated regions.',
)
_GRID_SHARE = flags.DEFINE_list(
  'grid_share',
  ['0', '0.5', '0.8'],
  'Share of the noise common to all regions of an image.',
)
_GRID_QUERY_NOISE = flags.DEFINE_list(
  'grid_query_noise',
  [f'{0.2 * i:g}' for i in range(16)],
  'Bounds of the uniform noise norm of perturbed query views.',
)
_CHUNK = flags.DEFINE_integer(
  'chunk', 16384, 'Images generated / scored at once.'
)
_NLIST = flags.DEFINE_integer('nlist', 0, 'ivfpq lists (0: ~sqrt(V), pow2).')
_COARSE = flags.DEFINE_enum(
  'coarse', 'flat', ['flat', 'hnsw'], 'ivfpq coarse quantizer.'
)
_PQ_M = flags.DEFINE_integer('pq_m', 64, 'ivfpq sub-quantizers.')
_PQ_NBITS = flags.DEFINE_integer('pq_nbits', 8, 'ivfpq bits per sub-code.')
_FAST_SCAN = flags.DEFINE_boolean(
  'fast_scan', False, 'IndexIVFPQFastScan (needs --pq_nbits=4).'
)
_TRAIN_SIZE = flags.DEFINE_integer('train_size', 100000, 'ivfpq k-means set.')
_HNSW_M = flags.DEFINE_integer('hnsw_m', 32, 'HNSW links per node.')
_EF_CONSTRUCTION = flags.DEFINE_integer(
  'ef_construction', 40, 'HNSW build depth.'
)
_SETTINGS = flags.DEFINE_list(
  'settings',
  ['16:100:300', '32:200:1000', '64:400:1000'],
  'Search settings nprobe|ef_search:k_regions:shortlist tried per index.',
)
_RESCORE = flags.DEFINE_boolean(
  'rescore',
  True,
  'Shortlist by the exact scores of the retrieved regions '
  '(index_search.search(rescore=...)).',
)
_LATENCY_QUERIES = flags.DEFINE_integer(
  'latency_queries', 10, 'Single queries timed (median).'
)
_MAPS_CACHE = flags.DEFINE_string(
  'maps_cache',
  '/tmp/regagg_search_scale_maps.npz',
  'Cache of the real conv5_4 maps of the samples ("" = none).',
)
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')


def sample_maps():
  """(G, alpha, (H, W)) per sample image: G = beta o F (H*W, K), alpha (H, W).

  The real VGG19 runs once; the maps are cached in --maps_cache (a
  derived, regenerable file outside the repository) when it is set.
  """
  cache = _MAPS_CACHE.value
  if cache and os.path.isfile(cache):
    with np.load(cache) as arrays:
      count = len(arrays.files) // 2
      return [
        (arrays[f'g{i}'], arrays[f'a{i}'], arrays[f'a{i}'].shape)
        for i in range(count)
      ]
  variables = weights.load_params()
  maps = []
  for path in sorted(SAMPLES_DIR.glob('ukbench*.jpg')):
    rgb = images.load_image(path, max_size=384)
    features = vgg19.features(variables, vgg19.preprocess(rgb[None]))[0]
    alpha = weighting.spatial_weights(features)  # eq. (1)
    beta = weighting.channel_weights(features)  # eq. (2)
    height, width, channels = features.shape
    maps.append(
      (
        np.asarray(features * beta).reshape(-1, channels),
        np.asarray(alpha),
        (height, width),
      )
    )
  if cache:
    np.savez(
      cache,
      **{f'g{i}': g for i, (g, _, _) in enumerate(maps)},
      **{f'a{i}': a for i, (_, a, _) in enumerate(maps)},
    )
  return maps


def pool_boxes(rng, maps, count):
  """eq. (9) descriptors of random boxes (or unions of two) of every sample.

  Args:
    rng: numpy Generator.
    maps: sample_maps() output (S images).
    count: B regions per image; region 0 is the whole image R_M.

  Returns:
    float32 (S * B, K) l2-normalised region descriptors, image by image.
  """
  pooled = []
  for scaled, alpha, (height, width) in maps:
    low = rng.uniform(0.0, 0.6, (count, 2, 2))
    high = low + rng.uniform(0.25, 1.0, (count, 2, 2))
    low[0], high[0] = 0.0, 1.0
    union = rng.random(count) < 0.3
    union[0] = False
    y = (np.arange(height) + 0.5) / height
    x = (np.arange(width) + 0.5) / width
    inside = (
      (y[None, None, :, None] >= low[:, :, None, None, 0])
      & (y[None, None, :, None] < high[:, :, None, None, 0])
      & (x[None, None, None, :] >= low[:, :, None, None, 1])
      & (x[None, None, None, :] < high[:, :, None, None, 1])
    )
    mask = inside[:, 0] | (inside[:, 1] & union[:, None, None])
    weights = mask.reshape(count, -1) * alpha.reshape(1, -1)  # eq. (9)
    pooled.append(weights.astype(np.float32) @ scaled)  # beta o sum alpha f
  return np.array(pca.l2_normalize(np.concatenate(pooled)))


def whiten_bank(bank):
  """Whitened bank regions float32 (S' * B, D) of the held-out samples.

  eq. (6) is fitted on the bank regions of the first --whiten_groups UKBench
  groups only (as the paper learns it on another dataset) and applied to the
  S' samples of the other groups, which alone feed the calibration and the
  simulation: whitening fitted on the very images it is applied to makes
  them (same objects included) almost orthogonal to each other.
  """
  split = 4 * _WHITEN_GROUPS.value * _BANK.value
  params = pca.fit(bank[:split], _DIM.value, whiten=True)
  return np.asarray(pca.apply(params, bank[split:]))


def eq7(query, query_valid, targets, targets_valid):
  """Exact eq. (7) in numpy: float32 (A, B) max VecSim over valid pairs."""
  dim = query.shape[-1]
  similarity_ = (query.reshape(-1, dim) @ targets.reshape(-1, dim).T).reshape(
    query.shape[0], query.shape[1], targets.shape[0], targets.shape[1]
  )
  pair_valid = query_valid[:, :, None, None] & targets_valid[None, None]
  return np.where(pair_valid, similarity_, -np.inf).max(axis=(1, 3))


def real_images(rng, whitened, views):
  """`views` draws of M real regions per sample image, R_M last.

  Returns:
    float32 (S * views, M, D) whitened regions, int (S * views,) sample
    image and int (S * views,) UKBench group (sample // 4).
  """
  per = _BANK.value
  count = whitened.shape[0] // per
  boxes = rng.integers(1, per, (count, views, _NUM_REGIONS.value))
  boxes[..., -1] = 0
  rows = np.arange(count)[:, None, None] * per + boxes
  sample = np.repeat(np.arange(count), views)
  regions = whitened[rows].reshape(-1, _NUM_REGIONS.value, whitened.shape[1])
  return regions, sample, sample // 4


def simulate(rng, whitened, params, num_images):
  """Whitened regions float32 (n, M, D) and valid (n, M) of n new images.

  Each image mixes `sources` distinct sample images: region m is
  l2(sum_s w_ms b_ms) + noise * l2(sqrt(share) g + sqrt(1 - share) g_m),
  l2-normalised, where b_ms is a random whitened bank region of source s (the
  whole-image region for the last region R_M), w_m ~ Dirichlet(
  `concentration`), g a random direction of the image and g_m of the region
  (real regions of one image are correlated, so is their noise).
  """
  sources, concentration, noise, share = params
  per = _BANK.value
  count = whitened.shape[0] // per
  shape = (num_images, _NUM_REGIONS.value)
  picked = np.argsort(rng.random((num_images, count)), axis=1)[:, :sources]
  weights = rng.dirichlet(np.full(sources, concentration), shape).astype(
    np.float32
  )
  boxes = rng.integers(1, per, shape + (sources,))
  boxes[:, -1] = 0
  rows = picked[:, None, :] * per + boxes
  regions = np.zeros(shape + (whitened.shape[1],), np.float32)
  for s in range(sources):
    regions += weights[..., s, None] * whitened[rows[..., s]]
  shared = rng.standard_normal(
    (num_images, 1, regions.shape[-1]), dtype=np.float32
  )
  own = rng.standard_normal(regions.shape, dtype=np.float32)
  regions = unit(regions) + noise * unit(
    np.sqrt(share) * unit(shared) + np.sqrt(1.0 - share) * unit(own)
  )
  valid = rng.random(shape) >= _INVALID.value
  valid[:, -1] = True
  return np.where(valid[..., None], unit(regions), 0.0), valid


def unit(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def perturb(rng, regions, valid, noise_range):
  """Perturbed views: noise of norm ~ U(noise_range) per query, 1-2 regions
  (never R_M) dropped."""
  low, high = noise_range
  norm = rng.uniform(low, high, (regions.shape[0], 1, 1)).astype(np.float32)
  query = unit(
    regions + norm * unit(rng.standard_normal(regions.shape, dtype=np.float32))
  )
  query_valid = valid.copy()
  for q, dropped in enumerate(rng.integers(1, 3, regions.shape[0])):
    query_valid[q, rng.choice(_NUM_REGIONS.value - 1, dropped, False)] = False
  return np.where(query_valid[..., None], query, 0.0), query_valid


QUANTILES = (10, 50, 90, 99)


def calibrate(rng, whitened):
  """Generator and perturbation parameters matched to the real eq. (7) scores.

  Real: `--calibration_views` draws of M real regions of each sample image;
  different-identity scores are eq. (7) between images of different UKBench
  groups, same-identity scores between different images of one group. The
  (sources, concentration, noise) of the grid whose different-identity
  quantiles (10/50/90/99 %) are closest (max abs difference) to the real ones
  (and noise share) is kept, then the query noise range whose query-to-source quantiles are
  closest to the real same-group ones. Nothing here looks at an index.
  """
  regions, sample, group = real_images(rng, whitened, _CALIBRATION_VIEWS.value)
  valid = np.ones(regions.shape[:2], bool)
  real = eq7(regions, valid, regions, valid)
  real_different = real[group[:, None] != group[None, :]]
  real_same = real[
    (group[:, None] == group[None, :]) & (sample[:, None] != sample[None, :])
  ]
  within = lambda x: np.einsum('amd,and->amn', x, x)[
    :, ~np.eye(x.shape[1], dtype=bool)
  ]
  target = np.percentile(real_different, QUANTILES)
  size = _CALIBRATION_IMAGES.value
  best = None
  for sources in (int(v) for v in _GRID_SOURCES.value):
    for concentration in (float(v) for v in _GRID_CONCENTRATION.value):
      for noise in (float(v) for v in _GRID_NOISE.value):
        for share in (float(v) for v in _GRID_SHARE.value):
          params = (sources, concentration, noise, share)
          sim, sim_valid = simulate(rng, whitened, params, size)
          scores = eq7(sim, sim_valid, sim, sim_valid)[
            ~np.eye(size, dtype=bool)
          ]
          error = np.abs(np.percentile(scores, QUANTILES) - target).max()
          if best is None or error < best[0]:
            best = (error, params, scores)
  _, params, sim_different = best
  sim, sim_valid = simulate(rng, whitened, params, size)
  target = np.percentile(real_same, QUANTILES)
  best = None
  steps = [float(v) for v in _GRID_QUERY_NOISE.value]
  for low in steps:
    for high in (v for v in steps if v >= low):
      query, query_valid = perturb(rng, sim, sim_valid, (low, high))
      scores = np.einsum('qamd,qbnd->qmn', query[:, None], sim[:, None])
      scores = np.where(
        query_valid[:, :, None] & sim_valid[:, None, :], scores, -np.inf
      ).max(axis=(1, 2))
      error = np.abs(np.percentile(scores, QUANTILES) - target).max()
      if best is None or error < best[0]:
        best = (error, (low, high), scores)
  _, noise_range, sim_same = best
  print(
    f'calibration: {regions.shape[0]} real images ({len(set(sample))} '
    f'samples x {_CALIBRATION_VIEWS.value} region draws), '
    f'{size} simulated; chosen sources={params[0]} '
    f'concentration={params[1]} noise={params[2]} share={params[3]}, '
    f'query noise U{noise_range}'
  )
  print(
    '  eq. (7) score quantile'
    + ' ' * 20
    + ' '.join(f'{q:>6}%' for q in QUANTILES + (99.9,))
    + '   pairs'
  )
  for name, scores in (
    ('real different group', real_different),
    ('sim different identity', sim_different),
    ('real same group', real_same),
    ('sim query-to-source', sim_same),
    ('real region pairs of 1 image (not fitted)', within(regions)),
    ('sim region pairs of 1 image', within(sim)),
  ):
    values = np.percentile(scores, QUANTILES + (99.9,))
    print(
      f'  {name:41s} '
      + ' '.join(f'{v:7.3f}' for v in values)
      + f' {scores.size:7d}',
      flush=True,
    )
  return params, noise_range


def make_collection(rng, maps):
  """float16 (N, M, D) whitened store, valid (N, M) and a query simulator."""
  whitened = whiten_bank(pool_boxes(rng, maps, _BANK.value))
  params, noise_range = calibrate(rng, whitened)
  simulator = lambda count: simulate(rng, whitened, params, count)
  num_images, chunk = _NUM_IMAGES.value, _CHUNK.value
  store = np.empty((num_images, _NUM_REGIONS.value, _DIM.value), np.float16)
  store_valid = np.empty((num_images, _NUM_REGIONS.value), bool)
  for start in range(0, num_images, chunk):
    stop = min(start + chunk, num_images)
    store[start:stop], store_valid[start:stop] = simulator(stop - start)
    logging.info('simulated %d / %d images', stop, num_images)
  return store, store_valid, simulator, noise_range


def make_queries(rng, simulator, noise_range, store, store_valid, pool):
  """Perturbed views of database rows [0, pool) plus fresh images."""
  rows = rng.choice(pool, _NUM_QUERIES.value, replace=False)
  query, query_valid = perturb(
    rng, store[rows].astype(np.float32), store_valid[rows], noise_range
  )
  fresh, fresh_valid = simulator(_FRESH_QUERIES.value)
  query = np.concatenate([query, fresh]).astype(np.float32)
  query_valid = np.concatenate([query_valid, fresh_valid])
  return query, query_valid, rows


def brute_force(store, store_valid, query, query_valid):
  """Exact eq. (7) over the float16 store: scores (Q, N) and seconds."""
  chunk = _CHUNK.value
  scores = np.empty((query.shape[0], store.shape[0]), np.float32)
  warm = np.zeros((chunk,) + store.shape[1:], np.float32)
  jax.block_until_ready(
    similarity.image_similarity(  # compile
      query, query_valid, warm, np.ones(warm.shape[:2], bool)
    )
  )
  start_time = time.perf_counter()
  for start in range(0, store.shape[0], chunk):
    stop = min(start + chunk, store.shape[0])
    block = np.zeros((chunk,) + store.shape[1:], np.float32)
    block_valid = np.zeros((chunk, store.shape[1]), bool)
    block[: stop - start], block_valid[: stop - start] = (
      store[start:stop],
      store_valid[start:stop],
    )
    chunk_scores, _ = similarity.image_similarity(
      query, query_valid, block, block_valid
    )  # eq. (7)
    scores[:, start:stop] = np.asarray(chunk_scores)[:, : stop - start]
  return scores, time.perf_counter() - start_time


def recall_at_100(ranks, exact_scores):
  """Mean recall@100 over all, perturbed and fresh queries."""
  exact = np.argsort(-exact_scores, axis=1, kind='stable')[:, :100]
  recall = np.array(
    [np.intersect1d(e, r[:100]).size / 100 for e, r in zip(exact, ranks)]
  )
  perturbed = _NUM_QUERIES.value
  return (
    f'{recall.mean():.4f} (perturbed {recall[:perturbed].mean():.4f}, '
    f'fresh {recall[perturbed:].mean():.4f})'
  )


def index_bytes(built):
  return (
    faiss.serialize_index(built.index).nbytes
    + built.image_ids.nbytes
    + built.region_ids.nbytes
  )


def build_options(kind):
  if kind == 'ivfpq':
    return {
      'nlist': _NLIST.value,
      'm': _PQ_M.value,
      'nbits': _PQ_NBITS.value,
      'fast_scan': _FAST_SCAN.value,
      'nprobe': 16,
      'train_size': _TRAIN_SIZE.value,
      'hnsw_m': _HNSW_M.value,
      'coarse': _COARSE.value,
    }
  if kind == 'hnsw':
    return {'hnsw_m': _HNSW_M.value, 'ef_construction': _EF_CONSTRUCTION.value}
  return {}


def measure_kind(
  kind, store, store_valid, query, query_valid, exact_scores, brute_per_query
):
  """Builds one index and prints one line per search setting."""
  start = time.perf_counter()
  built = region_index.build(
    store, store_valid, kind=kind, options=build_options(kind)
  )
  build_seconds = time.perf_counter() - start
  print(
    f'  {kind:5s} build {build_seconds:8.1f} s, index '
    f'{index_bytes(built) / 2**20:9.1f} MiB, options '
    f'{built.metadata["options"]}',
    flush=True,
  )
  settings = ['0:1000:1000'] if kind == 'flat' else _SETTINGS.value
  for setting in settings:
    probe, k_regions, shortlist = (int(v) for v in setting.split(':'))
    # pylint: disable-next=cell-var-from-loop
    search = lambda q, v: index_search.search(
      built,
      store,
      store_valid,
      q,
      v,
      k_regions=k_regions,
      shortlist=shortlist,
      nprobe=probe or None,
      ef_search=probe or None,
      rescore=_RESCORE.value,
    )
    search(query, query_valid)  # compile every shape bucket
    search(query[:1], query_valid[:1])
    start = time.perf_counter()
    _, ranks, _ = search(query, query_valid)
    batched = (time.perf_counter() - start) / query.shape[0]
    latencies = []
    for q in range(min(_LATENCY_QUERIES.value, query.shape[0])):
      start = time.perf_counter()
      search(query[q : q + 1], query_valid[q : q + 1])
      latencies.append(time.perf_counter() - start)
    latency = float(np.median(latencies))
    print(
      f'    {"nprobe" if kind == "ivfpq" else "ef"}={probe} '
      f'k_regions={k_regions} shortlist={shortlist} '
      f'rescore={_RESCORE.value}: '
      f'recall@100 {recall_at_100(ranks, exact_scores)}, '
      f'{batched * 1e3:8.2f} ms/query batched '
      f'({brute_per_query / batched:6.1f}x brute force), single '
      f'{latency * 1e3:8.2f} ms ({brute_per_query / latency:6.1f}x)',
      flush=True,
    )
  del built


def measure_scale(
  num_images, kinds, store, store_valid, query, query_valid, sources
):
  store, store_valid = store[:num_images], store_valid[:num_images]
  exact_scores, seconds = brute_force(store, store_valid, query, query_valid)
  source_first = np.mean(
    np.argmax(exact_scores[: sources.size], axis=1) == sources
  )
  brute_per_query = seconds / query.shape[0]
  ranked = -np.sort(-exact_scores, axis=1)
  spread = ', '.join(
    f'{rank + 1}: {np.median(ranked[:, rank]):.3f}'
    for rank in (0, 1, 9, 99, 999)
    if rank < num_images
  )
  print(
    f'N={num_images} images, {int(store_valid.sum())} region vectors, '
    f'Q={query.shape[0]}: brute-force eq. (7) {seconds:.1f} s, '
    f'{brute_per_query * 1e3:.1f} ms/query (batched); median exact '
    f'score at rank {spread}; {source_first:.0%} of the perturbed '
    f'queries rank their source first',
    flush=True,
  )
  for kind in kinds:
    measure_kind(
      kind,
      store,
      store_valid,
      query,
      query_valid,
      exact_scores,
      brute_per_query,
    )


def main(argv):
  del argv
  start = time.perf_counter()
  rng = np.random.default_rng(_SEED.value)
  maps = sample_maps()
  store, store_valid, simulator, noise_range = make_collection(rng, maps)
  small = min(_SMALL_IMAGES.value, _NUM_IMAGES.value)
  query, query_valid, sources = make_queries(
    rng, simulator, noise_range, store, store_valid, small
  )
  del simulator  # frees the bank
  print(
    f'jax {jax.__version__}, faiss {faiss.__version__} with '
    f'{faiss.omp_get_max_threads()} threads; simulated {store.shape} '
    f'float16 store ({store.nbytes / 2**30:.2f} GiB) from '
    f'{len(maps)} real conv5_4 maps in '
    f'{time.perf_counter() - start:.0f} s',
    flush=True,
  )
  at_full = [
    k
    for k in _KINDS.value
    if k == 'ivfpq' or _NUM_IMAGES.value <= _SMALL_IMAGES.value
  ]
  measure_scale(
    _NUM_IMAGES.value, at_full, store, store_valid, query, query_valid, sources
  )
  if _NUM_IMAGES.value > _SMALL_IMAGES.value:
    measure_scale(
      small, _KINDS.value, store, store_valid, query, query_valid, sources
    )
  print(f'total wall time {time.perf_counter() - start:.0f} s')


if __name__ == '__main__':
  app.run(main)
