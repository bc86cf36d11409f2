"""Regional diffusion at scale: graph build and query latency, measured.

  PYTHONPATH=. python3 benchmarks/rerank_scale.py --scales=5000,100000 \
      --num_images=100000 --small_images=5000 --num_queries=20 \
      --fresh_queries=0 --k=50 --shortlist=2 --pq_m=256 --pq_nbits=4 \
      --fast_scan --coarse=hnsw --settings=64:1500:300 \
      --calibration_images=200 --latency_queries=10
      # 2026-12-07, shared 2-core CPU (commit 564a2c1), 4:46 wall, peak RSS
      # 5.3 GiB. N=5000 (39312 regions): index kNN 6.2 s (build 1.9 s),
      # exact kNN 8.4 s, the index finds 0.833 of the exact edges; query
      # 9.4 ms first search + 23.7 ms diffusion of the top 1000 = 33.1 ms.
      # N=100000 (785777 regions): index kNN 156.9 s (build 18.4 s),
      # reciprocal affinity 70.4 s; query 11.4 + 20.3 = 31.6 ms. Graph
      # 3200 B per image at k = 50 (store 8192 B, float16 D = 512).
      # The same at --scales=5000 --num_images=5000 --k=200 (the default):
      # index kNN 26.7 s, exact 15.0 s, 0.921 of the edges found, graph
      # 12800 B per image, query 10.8 + 43.2 = 54.0 ms.
      # 1M (--scales=1000000 --num_images=1000000, the rest as above;
      # commit 7303f85, 1 h 26 min, peak RSS 18.4 GiB): 7859054 regions,
      # index kNN 4572 s (build 497 s), reciprocal affinity 158 s, query
      # 24.1 + 41.0 = 65.1 ms. Table: docs/benchmarks.md.

The collection is `search_scale.py`'s simulated one (real VGG19 region
descriptors of the bundled samples, mixed and calibrated to the real eq. 7
score distribution; its flags apply: --num_images is the largest scale,
--small_images the scale of the exact kNN). For each scale N of --scales
(the first N images of the collection):

  graph build  kNN of every valid region, exact (graph.nearest_regions in
               JAX, up to --small_images) and through an IVF-PQ region index
               (index build + search + exact re-scoring), then the reciprocal
               affinity (graph.mutual_affinity); seconds of each, the share
               of exact kNN edges the index finds, bytes per image.
  query        first search (index_search.search over the IVF-PQ index, its
               first --settings entry) and the diffusion re-rank of its top
               --truncate images (rerank.rerank_diffusion), median
               single-query latency of each over --latency_queries queries.

The online diffusion cost depends on T = --truncate, k and M, not on N; the
first search is the one `search_scale.py` measures at 1M.
"""

import functools
import resource
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import search_scale
from regagg_jax.search import diffusion
from regagg_jax.search import graph
from regagg_jax.search import index_search
from regagg_jax.search import region_index
from regagg_jax.search import rerank

_SCALES = flags.DEFINE_list('scales', ['5000'], 'Database sizes N measured.')
_K = flags.DEFINE_integer('k', graph.DEFAULT_NEIGHBOURS, 'Graph neighbours.')
_TRUNCATE = flags.DEFINE_integer('truncate', 1000, 'T images diffused.')
_SHORTLIST = flags.DEFINE_integer(
  'shortlist', 4, 'Index hits re-scored per graph neighbour kept.'
)


def _timed(function, *args, **kwargs):
  start = time.perf_counter()
  value = function(*args, **kwargs)
  return value, time.perf_counter() - start


def _graph(store, valid, region_index_=None):
  nearest = graph.nearest_regions(
    store,
    valid,
    k=_K.value,
    region_index=region_index_,
    chunk=2048,
    shortlist=_SHORTLIST.value,
  )
  neighbours = np.empty((valid.size, _K.value), np.int32)
  similarities = np.empty((valid.size, _K.value), np.float32)
  for start in range(0, valid.size, 1 << 16):  # no list of parts to join
    stop = min(start + (1 << 16), valid.size)
    neighbours[start:stop], similarities[start:stop] = nearest(start, stop)
  return neighbours, similarities


def _peak_rss_gib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _edge_recall(exact, approximate):
  """Share of the exact kNN edges found by the index kNN."""
  found = total = 0
  for row, other in zip(exact, approximate):
    row = row[row >= 0]
    found += np.intersect1d(row, other).size
    total += row.size
  return found / max(total, 1)


def measure(num_images, store, store_valid, query, query_valid):
  store, store_valid = store[:num_images], store_valid[:num_images]
  num_regions = store.shape[1]
  options = search_scale.build_options('ivfpq')
  built, index_seconds = _timed(
    region_index.build, store, store_valid, kind='ivfpq', options=options
  )
  knn, knn_seconds = _timed(_graph, store, store_valid, built)
  table, mutual_seconds = _timed(graph.mutual_affinity, *knn)
  line = (
    f'N={num_images} ({int(store_valid.sum())} regions), k={_K.value}: '
    f'index kNN {index_seconds + knn_seconds:.1f} s (index build '
    f'{index_seconds:.1f} s, search + re-score {knn_seconds:.1f} s), '
    f'reciprocal affinity {mutual_seconds:.1f} s'
  )
  if num_images <= search_scale._SMALL_IMAGES.value:
    exact, exact_seconds = _timed(_graph, store, store_valid)
    line += (
      f'; exact kNN {exact_seconds:.1f} s, the index finds '
      f'{_edge_recall(exact[0], knn[0]):.3f} of its edges'
    )
    del exact
  del knn
  edges = int((table[0] >= 0).sum())
  print(
    line + f'; {edges / num_images:.1f} reciprocal edges per image, graph '
    f'{(table[0].nbytes + table[1].nbytes) / num_images:.0f} B per image '
    f'(store {store[0].nbytes} B); peak RSS {_peak_rss_gib():.1f} GiB',
    flush=True,
  )
  probe, k_regions, shortlist = (
    int(v) for v in search_scale._SETTINGS.value[0].split(':')
  )
  first_search = functools.partial(
    index_search.search,
    built,
    store,
    store_valid,
    k_regions=k_regions,
    shortlist=shortlist,
    nprobe=probe,
  )

  def diffuse(regions, regions_valid, scores):
    return rerank.rerank_diffusion(
      regions,
      regions_valid,
      store,
      store_valid,
      scores,
      table[0],
      table[1],
      truncate=_TRUNCATE.value,
      options=diffusion.DiffusionOptions(),
    )

  def full_scores(q):
    scores, ranks, _ = first_search(query[q : q + 1], query_valid[q : q + 1])
    full = np.full((1, num_images), -np.inf, np.float32)
    found = ranks[0] >= 0
    full[0, ranks[0, found]] = scores[0, found]
    return full

  diffuse(query[:1], query_valid[:1], full_scores(0))  # compile
  first_times, diffusion_times = [], []
  for q in range(min(search_scale._LATENCY_QUERIES.value, query.shape[0])):
    scores, seconds = _timed(full_scores, q)
    first_times.append(seconds)
    _, seconds = _timed(
      diffuse, query[q : q + 1], query_valid[q : q + 1], scores
    )
    diffusion_times.append(seconds)
  first, diffused = np.median(first_times), np.median(diffusion_times)
  print(
    f'  query (median of {len(first_times)}): first search (ivfpq '
    f'nprobe={probe} k_regions={k_regions} shortlist={shortlist}) '
    f'{first * 1e3:.1f} ms + diffusion of the top {_TRUNCATE.value} '
    f'images {diffused * 1e3:.1f} ms = {(first + diffused) * 1e3:.1f} ms',
    flush=True,
  )


def main(argv):
  del argv
  rng = np.random.default_rng(search_scale._SEED.value)
  maps = search_scale.sample_maps()
  store, store_valid, simulator, noise_range = search_scale.make_collection(
    rng, maps
  )
  query, query_valid, _ = search_scale.make_queries(
    rng,
    simulator,
    noise_range,
    store,
    store_valid,
    min(search_scale._SMALL_IMAGES.value, store.shape[0]),
  )
  for scale in (int(v) for v in _SCALES.value):
    measure(min(scale, store.shape[0]), store, store_valid, query, query_valid)


if __name__ == '__main__':
  app.run(main)
