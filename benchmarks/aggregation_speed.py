"""Speed of the aggregation and search stages, as ratios measured in one run.

  python3 benchmarks/aggregation_speed.py            # full sizes (~3-5 min, 2 cores)
  python3 benchmarks/aggregation_speed.py --repeats=2 --num_images=1000

1. Per-image cost of everything after the CNN that this package computes on
   the conv5_4 map (alpha, beta: eq. 1-2; second-order region descriptors:
   eq. 4-5; PCA-whitening: eq. 6) for M regions, K' and D, jitted and warm,
   relative to the VGG19 forward pass on the same 1024 x 768 image (random
   weights: the cost does not depend on them). Region proposal (Hessian-affine
   keypoints and clustering on the image) is not included.
2. Search throughput of `similarity.image_similarity` (eq. 7) on an
   N images x M regions x D database, in queries per second, against a FAISS
   IndexFlatIP over the valid region vectors followed by a per-image max,
   both exact (k = all regions) and with k = --faiss_k (approximate max).

The two sides of each ratio alternate repeat by repeat, so that load from
other processes on a shared machine hits both; medians are reported.

jaxlib runs its LAPACK custom calls (QR, SVD of eq. 5) through scipy's
OpenBLAS, whose own worker threads compete with XLA's thread pool: on a
loaded 2-core machine a batched QR took 580 ms with them and 61 ms without.
--lapack_threads=1 (default) caps that one library
(batch_encoder.limit_lapack_threads, through its scipy_openblas_set_num_threads
entry point); FAISS's bundled OpenBLAS and numpy's are left alone. --lapack_threads=0 keeps the library default.
"""

import functools
import time

from absl import app
from absl import flags
import faiss
import jax
import jax.numpy as jnp
import numpy as np

from regagg_jax.encoding import batch_encoder
from regagg_jax.aggregation import pca
from regagg_jax.aggregation import pooling
from regagg_jax.search import similarity
from regagg_jax.features import vgg19
from regagg_jax.features import weighting

_REPEATS = flags.DEFINE_integer('repeats', 5, 'Alternating timing rounds.')
_IMAGE_HEIGHT = flags.DEFINE_integer('image_height', 768, 'H_I of the image.')
_IMAGE_WIDTH = flags.DEFINE_integer('image_width', 1024, 'W_I of the image.')
_NUM_REGIONS = flags.DEFINE_integer('num_regions', 8, 'M regions per image.')
_REDUCED_DIM = flags.DEFINE_integer('reduced_dim', 128, "K' of eq. 4.")
_DIM = flags.DEFINE_integer('dim', 512, 'D of eq. 6.')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 5000, 'N database images.')
_NUM_QUERIES = flags.DEFINE_integer('num_queries', 55, 'Q queries per batch.')
_CHUNK_SIZE = flags.DEFINE_integer('chunk_size', 256, 'Database chunk.')
_FAISS_K = flags.DEFINE_integer('faiss_k', 100, 'k of the approximate FAISS.')
_LAPACK_THREADS = flags.DEFINE_integer(
  'lapack_threads',
  1,
  "Threads of scipy's OpenBLAS (jaxlib's LAPACK); 0 keeps its default.",
)


def time_call(fn, *args):
  """Seconds of one warm call, output ready."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def orthonormal(rng, rows, cols):
  return np.linalg.qr(rng.normal(size=(rows, cols)))[0].astype(np.float32)


def encode_regions(features, masks, valid, pca1, pca2):
  """Everything after the CNN for one image: (M, D) whitened descriptors."""
  alpha = weighting.spatial_weights(features, valid)
  beta = weighting.channel_weights(features, valid)
  second = pooling.second_order(features, masks, alpha, beta, pca1, valid=valid)
  return pca.apply(pca2, second)


def aggregation_ratio(rng):
  """Median VGG19 forward and aggregation seconds per image."""
  variables = vgg19.init_params(jax.random.PRNGKey(0))
  image = rng.integers(
    0, 256, (1, _IMAGE_HEIGHT.value, _IMAGE_WIDTH.value, 3), dtype=np.uint8
  )
  x = vgg19.preprocess(image)
  features = vgg19.features(variables, x)[0]
  height, width, channels = features.shape
  masks = rng.random((_NUM_REGIONS.value, height, width)) < 0.4
  masks[-1] = True
  valid = np.ones((height, width), bool)
  reduced = _REDUCED_DIM.value
  vec_dim = reduced * (reduced + 1) // 2
  pca1 = pca.PCAParams(
    jnp.zeros(channels), orthonormal(rng, channels, reduced), jnp.ones(reduced)
  )
  pca2 = pca.PCAParams(
    jnp.zeros(vec_dim),
    orthonormal(rng, vec_dim, _DIM.value),
    jnp.ones(_DIM.value),
  )
  encode = jax.jit(encode_regions)
  forward = functools.partial(vgg19.features, variables)
  time_call(encode, features, masks, valid, pca1, pca2)  # compile
  time_call(forward, x)
  cnn, aggregation = [], []
  for _ in range(_REPEATS.value):
    cnn.append(time_call(forward, x))
    aggregation.append(
      np.median(
        [
          time_call(encode, features, masks, valid, pca1, pca2)
          for _ in range(5)
        ]
      )
    )
  return np.median(cnn), np.median(aggregation), features.shape


def faiss_search(
  index, region_image, query_regions, query_owner, num_queries, num_images, k
):
  """FAISS region scores, max per database image and per query: (Q, N).

  Region vectors are stored image by image, so with k = all regions the
  per-image max is a `reduceat` over contiguous columns; with a smaller k the
  returned hits are max-scattered (images without a hit stay -inf).
  """
  distances, labels = index.search(query_regions, k)
  scores = np.full((query_regions.shape[0], num_images), -np.inf, np.float32)
  if k == index.ntotal:
    dense = np.empty_like(distances)
    np.put_along_axis(dense, labels, distances, axis=1)
    images, starts = np.unique(region_image, return_index=True)
    scores[:, images] = np.maximum.reduceat(dense, starts, axis=1)
  else:
    rows = np.repeat(np.arange(query_regions.shape[0]), k)
    found = labels.reshape(-1) >= 0
    np.maximum.at(
      scores,
      (rows[found], region_image[labels.reshape(-1)[found]]),
      distances.reshape(-1)[found],
    )
  per_query = np.full((num_queries, num_images), -np.inf, np.float32)
  owners, starts = np.unique(query_owner, return_index=True)
  per_query[owners] = np.maximum.reduceat(scores, starts, axis=0)
  return per_query


def search_ratio(rng):
  """Median seconds per query batch: ours, FAISS exact, FAISS top-k."""
  shape = (_NUM_IMAGES.value, _NUM_REGIONS.value, _DIM.value)
  database = pca.l2_normalize(rng.normal(size=shape).astype(np.float32))
  database_valid = rng.random(shape[:2]) < 0.9
  queries = database[: _NUM_QUERIES.value]
  query_valid = database_valid[: _NUM_QUERIES.value]
  search = jax.jit(
    functools.partial(similarity.image_similarity, chunk_size=_CHUNK_SIZE.value)
  )
  # FAISS holds and searches the valid regions only (padding is dropped).
  flat_valid = database_valid.reshape(-1)
  index = faiss.IndexFlatIP(_DIM.value)
  index.add(np.asarray(database).reshape(-1, _DIM.value)[flat_valid])
  region_image = np.repeat(np.arange(shape[0]), shape[1])[flat_valid]
  query_regions = np.asarray(queries)[query_valid]
  query_owner = np.nonzero(query_valid)[0]
  run_faiss = functools.partial(
    faiss_search,
    index,
    region_image,
    query_regions,
    query_owner,
    _NUM_QUERIES.value,
    shape[0],
  )
  ours_scores, _ = search(queries, query_valid, database, database_valid)
  difference = float(
    np.max(np.abs(np.asarray(ours_scores) - run_faiss(index.ntotal)))
  )
  ours, exact, top_k = [], [], []
  for _ in range(_REPEATS.value):
    ours.append(
      time_call(search, queries, query_valid, database, database_valid)
    )
    exact.append(time_call(run_faiss, index.ntotal))
    top_k.append(time_call(run_faiss, _FAISS_K.value))
  return np.median(ours), np.median(exact), np.median(top_k), difference


def main(argv):
  del argv
  if _LAPACK_THREADS.value > 0:
    batch_encoder.limit_lapack_threads(_LAPACK_THREADS.value)
  rng = np.random.default_rng(0)
  print(
    f'jax {jax.__version__} on {jax.devices()[0].platform}, '
    f'{jax.device_count()} device(s); faiss {faiss.__version__} '
    f'with {faiss.omp_get_max_threads()} threads; scipy LAPACK threads '
    f'{_LAPACK_THREADS.value or "default"}'
  )
  cnn, aggregation, shape = aggregation_ratio(rng)
  print(
    f'VGG19 forward {_IMAGE_WIDTH.value}x{_IMAGE_HEIGHT.value} -> conv5_4 '
    f'{shape}: {cnn * 1e3:.1f} ms (median of {_REPEATS.value})'
  )
  print(
    f'aggregation (alpha, beta, 2nd-order, whitening) M={_NUM_REGIONS.value}'
    f" K'={_REDUCED_DIM.value} D={_DIM.value}: {aggregation * 1e3:.2f} ms"
  )
  print(f'aggregation / CNN = {100 * aggregation / cnn:.2f} % (target <= 5 %)')
  ours, exact, top_k, difference = search_ratio(rng)
  num_queries = _NUM_QUERIES.value
  print(
    f'search N={_NUM_IMAGES.value} x M={_NUM_REGIONS.value} x '
    f'D={_DIM.value}, Q={num_queries} queries x M regions:'
  )
  print(f'  image_similarity  {num_queries / ours:9.1f} queries/s')
  print(
    f'  FAISS exact + max {num_queries / exact:9.1f} queries/s  '
    f'(ours / FAISS = {exact / ours:.2f}x, max |score diff| '
    f'{difference:.1e})'
  )
  print(
    f'  FAISS k={_FAISS_K.value} + max {num_queries / top_k:9.1f} '
    f'queries/s  (ours / FAISS = {top_k / ours:.2f}x, approximate)'
  )


if __name__ == '__main__':
  app.run(main)
