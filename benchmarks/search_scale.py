"""Region index search at scale vs brute-force eq. (7), measured in one run.

  python3 benchmarks/search_scale.py --num_images=20000          # ~3 min
  nice -n 10 python3 benchmarks/search_scale.py --num_images=1000000 \\
      --small_images=50000 --num_queries=50 --fresh_queries=10 \\
      --nlist=1024 --train_size=40000 \\
      --settings=16:400:1000,32:800:2000,64:1000:3000
      # 38 min wall on the shared 2-core machine, peak RSS 11.4 GiB

A simulated collection of N images x M regions x D is generated on the fly
(never written to disk) from REAL region descriptors: the real VGG19 runs once
on the 56 bundled sample images (384 px, conv5_4 maps cached in --maps_cache)
and a bank of --bank regions per sample image is pooled with eq. (9)
(alpha-weighted sum over the cells of a random box, or a union of two boxes,
times beta; eq. 1-2; region 0 is the whole image). A simulated image copies
one sample image: each region is a random bank region of it (the last one its
whole-image region R_M), half of them mixed with weight U(0, --mix) with a
random bank region of a second sample image, PCA-whitened (eq. 6, fitted on
--fit_size such mixtures, D = --dim; the mixture is whitened through the
whitened bank, eq. 6 being linear up to the l2 norm), perturbed by noise of
norm --noise and l2-normalised. Bank regions recur ~V / (56 --bank) times, so
the collection is clustered and full of near-duplicates. --invalid of the
regions (never the last) are invalid. The store is float16 (N x M x D x 2 B).

Queries: --num_queries perturbed database images (noise of norm
--query_noise on every whitened region, 1-2 regions dropped) and
--fresh_queries new simulated images.

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

from regagg_jax import images
from regagg_jax import pca
from regagg_jax import region_index
from regagg_jax import similarity
from regagg_jax import vgg19
from regagg_jax import weighting

SAMPLES_DIR = pathlib.Path(__file__).resolve().parents[1] / 'data' / 'samples'
"""The 56 bundled sample images (384 px)."""

_NUM_IMAGES = flags.DEFINE_integer('num_images', 20000, 'N database images.')
_SMALL_IMAGES = flags.DEFINE_integer(
    'small_images', 100000, "Scale of 'flat' and 'hnsw' (and a second "
    "'ivfpq') when N is larger: the first images of the same collection.")
_NUM_REGIONS = flags.DEFINE_integer('num_regions', 8, 'M regions per image.')
_DIM = flags.DEFINE_integer('dim', 512, 'D after whitening (<= K = 512).')
_KINDS = flags.DEFINE_list('kinds', ['flat', 'ivfpq', 'hnsw'], 'Index kinds.')
_NUM_QUERIES = flags.DEFINE_integer('num_queries', 100,
                                    'Perturbed database images as queries.')
_FRESH_QUERIES = flags.DEFINE_integer('fresh_queries', 20,
                                      'Newly simulated images as queries.')
_BANK = flags.DEFINE_integer('bank', 4096, 'Real regions pooled per sample.')
_NOISE = flags.DEFINE_float('noise', 0.2, 'Noise norm on simulated regions.')
_MIX = flags.DEFINE_float('mix', 0.4, 'Largest weight of the mixed region.')
_INVALID = flags.DEFINE_float('invalid', 0.02, 'Share of invalid regions.')
_QUERY_NOISE = flags.DEFINE_float('query_noise', 0.5,
                                  'Noise norm on perturbed query regions.')
_FIT_SIZE = flags.DEFINE_integer('fit_size', 100000, 'Regions for the PCA.')
_CHUNK = flags.DEFINE_integer('chunk', 16384, 'Images generated / scored at '
                              'once.')
_NLIST = flags.DEFINE_integer('nlist', 0, 'ivfpq lists (0: ~sqrt(V), pow2).')
_COARSE = flags.DEFINE_enum('coarse', 'flat', ['flat', 'hnsw'],
                             'ivfpq coarse quantizer.')
_PQ_M = flags.DEFINE_integer('pq_m', 64, 'ivfpq sub-quantizers.')
_TRAIN_SIZE = flags.DEFINE_integer('train_size', 100000, 'ivfpq k-means set.')
_HNSW_M = flags.DEFINE_integer('hnsw_m', 32, 'HNSW links per node.')
_EF_CONSTRUCTION = flags.DEFINE_integer('ef_construction', 40,
                                        'HNSW build depth.')
_SETTINGS = flags.DEFINE_list(
    'settings', ['16:100:300', '32:200:1000', '64:400:1000'],
    'Search settings nprobe|ef_search:k_regions:shortlist tried per index.')
_LATENCY_QUERIES = flags.DEFINE_integer('latency_queries', 10,
                                        'Single queries timed (median).')
_MAPS_CACHE = flags.DEFINE_string(
    'maps_cache', '/tmp/regagg_search_scale_maps.npz',
    'Cache of the real conv5_4 maps of the samples ("" = none).')
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
      return [(arrays[f'g{i}'], arrays[f'a{i}'], arrays[f'a{i}'].shape)
              for i in range(count)]
  variables = vgg19.load_params()
  maps = []
  for path in sorted(SAMPLES_DIR.glob('ukbench*.jpg')):
    rgb = images.load_image(path, max_size=384)
    features = vgg19.features(variables, vgg19.preprocess(rgb[None]))[0]
    alpha = weighting.spatial_weights(features)  # eq. (1)
    beta = weighting.channel_weights(features)  # eq. (2)
    height, width, channels = features.shape
    maps.append((np.asarray(features * beta).reshape(-1, channels),
                 np.asarray(alpha), (height, width)))
  if cache:
    np.savez(cache, **{f'g{i}': g for i, (g, _, _) in enumerate(maps)},
             **{f'a{i}': a for i, (_, a, _) in enumerate(maps)})
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
    inside = ((y[None, None, :, None] >= low[:, :, None, None, 0])
              & (y[None, None, :, None] < high[:, :, None, None, 0])
              & (x[None, None, None, :] >= low[:, :, None, None, 1])
              & (x[None, None, None, :] < high[:, :, None, None, 1]))
    mask = inside[:, 0] | (inside[:, 1] & union[:, None, None])
    weights = mask.reshape(count, -1) * alpha.reshape(1, -1)  # eq. (9)
    pooled.append(weights.astype(np.float32) @ scaled)  # beta o sum alpha f
  return np.array(pca.l2_normalize(np.concatenate(pooled)))


def draw_mixtures(rng, num_images, bank_size, per_image):
  """Bank rows and weights of n simulated images: (first, second, a, w).

  Every image copies one sample image (its regions: random bank regions of
  it, the last one its whole-image region) and mixes half of its regions
  with weight w ~ U(0, --mix) with a random region of a second sample image.
  """
  shape = (num_images, _NUM_REGIONS.value)
  sources = rng.integers(0, bank_size // per_image, (2, num_images, 1))
  boxes = rng.integers(1, per_image, (2,) + shape)
  boxes[0, :, -1] = 0
  first, second = sources * per_image + boxes
  mix = np.where(rng.random(shape) < 0.5,
                 rng.uniform(0, _MIX.value, shape), 0.0).astype(np.float32)
  return first, second, 1.0 - mix, mix


def mixture_norm(bank, first, second, a, w):
  """|a b1 + w b2| of unit bank vectors b1, b2."""
  cosine = np.einsum('...k,...k->...', bank[first], bank[second])
  return np.sqrt(a * a + w * w + 2 * a * w * cosine)


def simulate(rng, bank, whitened_bank, whitened_mean, num_images):
  """Whitened regions float32 (n, M, D) and valid (n, M) of new images.

  eq. (6) of the mixture is linear up to its l2 norm, so it is computed
  from the whitened bank: l2((a W b1 + w W b2) / |a b1 + w b2| - W mean);
  then noise of norm --noise is added and the vector l2-normalised again.
  """
  first, second, a, w = draw_mixtures(rng, num_images, *bank_shape(bank))
  norm = mixture_norm(bank, first, second, a, w)
  regions = ((a[..., None] * whitened_bank[first]
              + w[..., None] * whitened_bank[second]) / norm[..., None]
             - whitened_mean)
  noise = rng.standard_normal(regions.shape, dtype=np.float32)
  regions = (np.asarray(pca.l2_normalize(regions))
             + _NOISE.value * np.asarray(pca.l2_normalize(noise)))
  valid = rng.random(first.shape) >= _INVALID.value
  valid[:, -1] = True
  return np.where(valid[..., None], pca.l2_normalize(regions), 0.0), valid


def bank_shape(bank):
  return bank.shape[0], _BANK.value


def make_collection(rng, maps):
  """float16 (N, M, D) whitened store, valid (N, M) and a query simulator."""
  bank = pool_boxes(rng, maps, _BANK.value)
  fit_images = -(-_FIT_SIZE.value // _NUM_REGIONS.value)
  first, second, a, w = draw_mixtures(rng, fit_images, *bank_shape(bank))
  mixed = ((a[..., None] * bank[first] + w[..., None] * bank[second])
           / mixture_norm(bank, first, second, a, w)[..., None])
  params = pca.fit(mixed.reshape(-1, bank.shape[1]),
                   _DIM.value, whiten=True)  # eq. (6)
  projection = np.asarray(params.components) * np.asarray(params.scale)
  whitened_bank = bank @ projection
  whitened_mean = np.asarray(params.mean) @ projection
  simulator = lambda count: simulate(rng, bank, whitened_bank, whitened_mean,
                                     count)
  num_images, chunk = _NUM_IMAGES.value, _CHUNK.value
  store = np.empty((num_images, _NUM_REGIONS.value, _DIM.value), np.float16)
  store_valid = np.empty((num_images, _NUM_REGIONS.value), bool)
  for start in range(0, num_images, chunk):
    stop = min(start + chunk, num_images)
    store[start:stop], store_valid[start:stop] = simulator(stop - start)
    logging.info('simulated %d / %d images', stop, num_images)
  return store, store_valid, simulator


def make_queries(rng, simulator, store, store_valid, pool):
  """Perturbed database images from rows [0, pool) plus fresh images."""
  rows = rng.choice(pool, _NUM_QUERIES.value, replace=False)
  query = store[rows].astype(np.float32)
  query_valid = store_valid[rows].copy()
  noise = np.asarray(pca.l2_normalize(
      rng.standard_normal(query.shape, dtype=np.float32)))
  query = np.asarray(pca.l2_normalize(query + _QUERY_NOISE.value * noise))
  for q, dropped in enumerate(rng.integers(1, 3, rows.size)):
    query_valid[q, rng.choice(_NUM_REGIONS.value - 1, dropped, False)] = False
  fresh, fresh_valid = simulator(_FRESH_QUERIES.value)
  query = np.concatenate([query, fresh])
  query_valid = np.concatenate([query_valid, fresh_valid])
  return np.where(query_valid[..., None], query, 0.0).astype(
      np.float32), query_valid


def brute_force(store, store_valid, query, query_valid):
  """Exact eq. (7) over the float16 store: scores (Q, N) and seconds."""
  chunk = _CHUNK.value
  scores = np.empty((query.shape[0], store.shape[0]), np.float32)
  warm = np.zeros((chunk,) + store.shape[1:], np.float32)
  jax.block_until_ready(similarity.image_similarity(  # compile
      query, query_valid, warm, np.ones(warm.shape[:2], bool)))
  start_time = time.perf_counter()
  for start in range(0, store.shape[0], chunk):
    stop = min(start + chunk, store.shape[0])
    block = np.zeros((chunk,) + store.shape[1:], np.float32)
    block_valid = np.zeros((chunk, store.shape[1]), bool)
    block[:stop - start], block_valid[:stop - start] = (store[start:stop],
                                                        store_valid[start:stop])
    chunk_scores, _ = similarity.image_similarity(query, query_valid, block,
                                                  block_valid)  # eq. (7)
    scores[:, start:stop] = np.asarray(chunk_scores)[:, :stop - start]
  return scores, time.perf_counter() - start_time


def recall_at_100(ranks, exact_scores):
  """Mean recall@100 over all, perturbed and fresh queries."""
  exact = np.argsort(-exact_scores, axis=1, kind='stable')[:, :100]
  recall = np.array([np.intersect1d(e, r[:100]).size / 100
                     for e, r in zip(exact, ranks)])
  perturbed = _NUM_QUERIES.value
  return (f'{recall.mean():.4f} (perturbed {recall[:perturbed].mean():.4f}, '
          f'fresh {recall[perturbed:].mean():.4f})')


def index_bytes(built):
  return (faiss.serialize_index(built.index).nbytes + built.image_ids.nbytes
          + built.region_ids.nbytes)


def build_options(kind, num_vectors):
  if kind == 'ivfpq':
    nlist = _NLIST.value or int(
        min(8192, max(64, 2 ** round(np.log2(np.sqrt(num_vectors))))))
    return {'nlist': nlist, 'm': _PQ_M.value, 'nprobe': 16,
            'train_size': _TRAIN_SIZE.value, 'hnsw_m': _HNSW_M.value,
            'coarse': _COARSE.value}
  if kind == 'hnsw':
    return {'hnsw_m': _HNSW_M.value, 'ef_construction': _EF_CONSTRUCTION.value}
  return {}


def measure_kind(kind, store, store_valid, query, query_valid, exact_scores,
                 brute_per_query):
  """Builds one index and prints one line per search setting."""
  start = time.perf_counter()
  built = region_index.build(store, store_valid, kind=kind,
                             options=build_options(kind, store_valid.sum()))
  build_seconds = time.perf_counter() - start
  print(f'  {kind:5s} build {build_seconds:8.1f} s, index '
        f'{index_bytes(built) / 2**20:9.1f} MiB, options '
        f'{built.metadata["options"]}', flush=True)
  settings = ['0:1000:1000'] if kind == 'flat' else _SETTINGS.value
  for setting in settings:
    probe, k_regions, shortlist = (int(v) for v in setting.split(':'))
    search = lambda q, v: region_index.search(  # pylint: disable=cell-var-from-loop
        built, store, store_valid, q, v, k_regions=k_regions,
        shortlist=shortlist, nprobe=probe or None, ef_search=probe or None)
    search(query[:16], query_valid[:16])  # compile the batch shapes
    search(query[:1], query_valid[:1])
    start = time.perf_counter()
    _, ranks, _ = search(query, query_valid)
    batched = (time.perf_counter() - start) / query.shape[0]
    latencies = []
    for q in range(min(_LATENCY_QUERIES.value, query.shape[0])):
      start = time.perf_counter()
      search(query[q:q + 1], query_valid[q:q + 1])
      latencies.append(time.perf_counter() - start)
    latency = float(np.median(latencies))
    print(f'    {"nprobe" if kind == "ivfpq" else "ef"}={probe} '
          f'k_regions={k_regions} shortlist={shortlist}: '
          f'recall@100 {recall_at_100(ranks, exact_scores)}, '
          f'{batched * 1e3:8.2f} ms/query batched '
          f'({brute_per_query / batched:6.1f}x brute force), single '
          f'{latency * 1e3:8.2f} ms ({brute_per_query / latency:6.1f}x)',
          flush=True)
  del built


def measure_scale(num_images, kinds, store, store_valid, query, query_valid):
  store, store_valid = store[:num_images], store_valid[:num_images]
  exact_scores, seconds = brute_force(store, store_valid, query, query_valid)
  brute_per_query = seconds / query.shape[0]
  ranked = -np.sort(-exact_scores, axis=1)
  spread = ', '.join(f'{rank + 1}: {np.median(ranked[:, rank]):.3f}'
                     for rank in (0, 1, 9, 99, 999) if rank < num_images)
  print(f'N={num_images} images, {int(store_valid.sum())} region vectors, '
        f'Q={query.shape[0]}: brute-force eq. (7) {seconds:.1f} s, '
        f'{brute_per_query * 1e3:.1f} ms/query (batched); median exact '
        f'score at rank {spread}', flush=True)
  for kind in kinds:
    measure_kind(kind, store, store_valid, query, query_valid, exact_scores,
                 brute_per_query)


def main(argv):
  del argv
  start = time.perf_counter()
  rng = np.random.default_rng(_SEED.value)
  maps = sample_maps()
  store, store_valid, simulator = make_collection(rng, maps)
  small = min(_SMALL_IMAGES.value, _NUM_IMAGES.value)
  query, query_valid = make_queries(rng, simulator, store, store_valid, small)
  del simulator  # frees the bank
  print(f'jax {jax.__version__}, faiss {faiss.__version__} with '
        f'{faiss.omp_get_max_threads()} threads; simulated {store.shape} '
        f'float16 store ({store.nbytes / 2**30:.2f} GiB) from '
        f'{len(maps)} real conv5_4 maps in '
        f'{time.perf_counter() - start:.0f} s', flush=True)
  at_full = [k for k in _KINDS.value
             if k == 'ivfpq' or _NUM_IMAGES.value <= _SMALL_IMAGES.value]
  measure_scale(_NUM_IMAGES.value, at_full, store, store_valid, query,
                query_valid)
  if _NUM_IMAGES.value > _SMALL_IMAGES.value:
    measure_scale(small, _KINDS.value, store, store_valid, query, query_valid)
  print(f'total wall time {time.perf_counter() - start:.0f} s')


if __name__ == '__main__':
  app.run(main)
