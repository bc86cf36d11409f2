"""FAISS index over region vectors, with exact eq. (7) / eq. (8) re-ranking.

Region descriptors are l2-normalised and whitened (eq. 6), so VecSim of
eq. (7) is the inner product and every index kind uses it:

  'flat'   exact IndexFlatIP.
  'ivfpq'  IndexIVFPQ: `nlist` inverted lists (0: the power of two nearest
           sqrt(V), 64 .. 65536; k-means on `train_size` valid
           vectors), residuals coded with `m` sub-quantizers of `nbits` bits.
           `coarse='hnsw'` assigns vectors to lists through an HNSW graph over
           the centroids (fast at millions of vectors). `fast_scan` (with
           nbits=4) uses IndexIVFPQFastScan: codes scanned with SIMD lookups,
           several times faster per byte of code. The exact re-rank
           below is the refinement stage: it reads the stored descriptors,
           so the index keeps no second copy of the vectors.
  'hnsw'   IndexHNSWFlat (`hnsw_m` links, `ef_construction`, `ef_search`).

Only valid regions are added; `image_ids` / `region_ids` map a FAISS label
(the vector's ordinal among the valid regions, row-major) back to (n, m).
`search` takes the top `k_regions` regions of every valid query region,
re-scores every retrieved region exactly against all the query's regions (the
stored vector is read from `database`: approximate PQ scores cannot order
near-equal distractors), keeps the per-image max (a lower bound of eq. 7),
and re-ranks the best `shortlist` images EXACTLY with eq. (7) on their
gathered float32 descriptors (and, with `qe`, eq. 8 on that shortlist), all
queries of a batch at once under `jax.vmap`.
"""

import functools
import json
import os
import shutil
import tempfile
from typing import Any, NamedTuple

import faiss
import jax
import jax.numpy as jnp
import numpy as np

from regagg_jax import similarity

FORMAT_VERSION = 1
"""Version of the saved layout; `load` refuses others."""

DEFAULT_OPTIONS = {
    'flat': {},
    'ivfpq': {'nlist': 0, 'm': 64, 'nbits': 8, 'fast_scan': False,
              'nprobe': 16, 'train_size': 100_000, 'coarse': 'hnsw',
              'hnsw_m': 32, 'quantizer_ef_search': 64, 'seed': 0},
    'hnsw': {'hnsw_m': 32, 'ef_construction': 80, 'ef_search': 128},
}
"""kind -> its options and their defaults."""


class RegionIndex(NamedTuple):
  """A FAISS index over the valid region vectors of N images.

  Attributes:
    index: faiss.Index over V valid region vectors (inner product).
    image_ids: int64 (V,) image row n of each vector.
    region_ids: int32 (V,) region m of each vector.
    metadata: JSON-serialisable dict: kind, options, D, num_images,
      num_regions, num_vectors, whitening_hash, store_hash, ...
  """
  index: Any
  image_ids: np.ndarray
  region_ids: np.ndarray
  metadata: dict


def _check_regions(name, descriptors, valid):
  if descriptors.ndim != 3:
    raise ValueError(f'{name} must be (images, regions, D), got shape '
                     f'{descriptors.shape}')
  if not np.issubdtype(descriptors.dtype, np.floating):
    raise TypeError(f'{name} must be float32 or float16, got '
                    f'{descriptors.dtype}')
  if valid.shape != descriptors.shape[:2]:
    raise ValueError(f'{name}_valid must be {descriptors.shape[:2]}, got '
                     f'{valid.shape}')
  if valid.dtype != np.bool_:
    raise TypeError(f'{name}_valid must be bool, got {valid.dtype}')


def _resolve_options(kind, options):
  if kind not in DEFAULT_OPTIONS:
    raise ValueError(f'kind must be one of {sorted(DEFAULT_OPTIONS)}, got '
                     f'{kind!r}')
  unknown = set(options or {}) - set(DEFAULT_OPTIONS[kind])
  if unknown:
    raise ValueError(f'unknown {kind} options {sorted(unknown)}; allowed: '
                     f'{sorted(DEFAULT_OPTIONS[kind])}')
  return dict(DEFAULT_OPTIONS[kind], **(options or {}))


def _make_index(kind, dim, options):
  metric = faiss.METRIC_INNER_PRODUCT
  if kind == 'flat':
    return faiss.IndexFlatIP(dim)
  if kind == 'hnsw':
    index = faiss.IndexHNSWFlat(dim, options['hnsw_m'], metric)
    index.hnsw.efConstruction = options['ef_construction']
    return index
  if options['coarse'] == 'hnsw':
    quantizer = faiss.IndexHNSWFlat(dim, options['hnsw_m'], metric)
  elif options['coarse'] == 'flat':
    quantizer = faiss.IndexFlatIP(dim)
  else:
    raise ValueError(f"ivfpq coarse must be 'hnsw' or 'flat', got "
                     f"{options['coarse']!r}")
  if dim % options['m']:
    raise ValueError(f"ivfpq m={options['m']} must divide D={dim}")
  if options['fast_scan'] and options['nbits'] != 4:
    raise ValueError(f"ivfpq fast_scan needs nbits=4, got {options['nbits']}")
  kind = faiss.IndexIVFPQFastScan if options['fast_scan'] else faiss.IndexIVFPQ
  index = kind(quantizer, dim, options['nlist'], options['m'], options['nbits'],
               metric)
  index.own_fields = True
  quantizer.this.disown()  # the IVF index frees it
  index.cp.seed = options['seed']
  return index


def _valid_vectors(descriptors, valid, start, stop):
  """float32 (n, D) valid region vectors of images [start, stop)."""
  block = descriptors[start:stop].reshape(-1, descriptors.shape[-1])
  return np.ascontiguousarray(block[valid[start:stop].reshape(-1)],
                              dtype=np.float32)


def build(descriptors, valid, *, kind='flat', options=None, metadata=None,
          add_batch=65536):
  """Builds a region index over the valid region vectors.

  Args:
    descriptors: float32 or float16 (N, M, D) l2-normalised whitened region
      descriptors (eq. 6), e.g. a memory map; read in chunks.
    valid: bool (N, M) regions to index (invalid ones are never added).
    kind: 'flat', 'ivfpq' or 'hnsw'.
    options: dict overriding DEFAULT_OPTIONS[kind], or None.
    metadata: extra JSON-serialisable fields, e.g. whitening_hash and
      store_hash (default 'none') that `load(expected=...)` checks.
    add_batch: images converted to float32 and added at once.

  Returns:
    RegionIndex.

  Raises:
    ValueError: wrong shapes, unknown kind or options, no valid region.
    TypeError: non-floating descriptors or non-boolean valid.
  """
  descriptors, valid = np.asarray(descriptors), np.asarray(valid)
  _check_regions('descriptors', descriptors, valid)
  options = _resolve_options(kind, options)
  num_images, num_regions, dim = descriptors.shape
  image_ids, region_ids = np.nonzero(valid)
  if not image_ids.size:
    raise ValueError('descriptors have no valid region to index')
  if kind == 'ivfpq' and not options['nlist']:
    options['nlist'] = int(np.clip(2 ** round(np.log2(np.sqrt(image_ids.size))),
                                   64, 65536))
  index = _make_index(kind, dim, options)
  if not index.is_trained:
    rng = np.random.default_rng(options['seed'])
    size = min(options['train_size'], image_ids.size)
    sample = np.sort(rng.choice(image_ids.size, size, replace=False))
    # k-means of the coarse centroids on a flat index, not on the HNSW graph.
    clustering = faiss.IndexFlatIP(dim)
    index.clustering_index = clustering
    index.train(np.ascontiguousarray(
        descriptors[image_ids[sample], region_ids[sample]], dtype=np.float32))
    index.clustering_index = None
    if options['coarse'] == 'hnsw':
      faiss.downcast_index(index.quantizer).hnsw.efSearch = options[
          'quantizer_ef_search']
  step = max(1, add_batch // num_regions)
  for start in range(0, num_images, step):
    index.add(_valid_vectors(descriptors, valid, start, start + step))
  metadata = dict({'whitening_hash': 'none', 'store_hash': 'none'},
                  **(metadata or {}), kind=kind, options=options, D=dim,
                  num_images=num_images, num_regions=num_regions,
                  num_vectors=int(image_ids.size))
  return RegionIndex(index, image_ids.astype(np.int64),
                     region_ids.astype(np.int32), metadata)


def save(path, region_index):
  """Writes index.faiss, ids.npz and metadata.json into directory `path`.

  Written under a temporary name, then renamed (replacing `path`).
  """
  path = os.path.abspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(path) + '.tmp-',
                         dir=os.path.dirname(path))
  try:
    faiss.write_index(region_index.index, os.path.join(tmp, 'index.faiss'))
    np.savez(os.path.join(tmp, 'ids.npz'), image_ids=region_index.image_ids,
             region_ids=region_index.region_ids)
    with open(os.path.join(tmp, 'metadata.json'), 'w') as stream:
      json.dump(dict(region_index.metadata, format_version=FORMAT_VERSION),
                stream, indent=1)
    if os.path.exists(path):
      shutil.rmtree(path)
    os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def load(path, *, expected=None):
  """Reads a directory written by `save`.

  Args:
    path: the directory.
    expected: dict of metadata values the index must have (e.g. D,
      num_images, whitening_hash, store_hash of the store it will search).

  Returns:
    RegionIndex.

  Raises:
    FileNotFoundError: not a region index directory.
    ValueError: other format version, inconsistent files, or a field that
      differs from `expected`.
  """
  file = os.path.join(path, 'metadata.json')
  if not os.path.isfile(file):
    raise FileNotFoundError(f'{path} is not a region index: {file} is missing')
  with open(file) as stream:
    metadata = json.load(stream)
  if metadata.pop('format_version', None) != FORMAT_VERSION:
    raise ValueError(f'{file} is not format version {FORMAT_VERSION}')
  differing = {key: (metadata.get(key), value)
               for key, value in (expected or {}).items()
               if metadata.get(key) != value}
  if differing:
    details = ', '.join(f'{key}={stored!r} (expected {wanted!r})'
                        for key, (stored, wanted) in differing.items())
    raise ValueError(f'region index {file} does not match: {details}')
  index = faiss.read_index(os.path.join(path, 'index.faiss'))
  with np.load(os.path.join(path, 'ids.npz')) as ids:
    image_ids, region_ids = ids['image_ids'], ids['region_ids']
  if not index.ntotal == image_ids.size == metadata['num_vectors'] or (
      index.d != metadata['D']):
    raise ValueError(f'{path}: index.faiss holds {index.ntotal} vectors of '
                     f'D={index.d}, ids.npz {image_ids.size}, {file} says '
                     f"{metadata['num_vectors']} of D={metadata['D']}")
  return RegionIndex(index, image_ids, region_ids, metadata)


def _search_parameters(region_index, nprobe, ef_search):
  """FAISS per-call search parameters (the index itself is not modified)."""
  kind, options = region_index.metadata['kind'], region_index.metadata['options']
  if kind == 'hnsw':
    return faiss.SearchParametersHNSW(efSearch=ef_search or options['ef_search'])
  if kind == 'ivfpq':
    quantizer = (faiss.SearchParametersHNSW(
        efSearch=options['quantizer_ef_search'])
                 if options['coarse'] == 'hnsw' else None)
    return faiss.SearchParametersIVF(nprobe=nprobe or options['nprobe'],
                                     quantizer_params=quantizer)
  return None


def _bucket(size):
  """Padded row count for `size` rows: >= 256, 4 steps per octave (<= 25 %
  padding), so that `_hit_scores` compiles for few shapes."""
  if size <= 256:
    return 256
  step = 64 << int(np.ceil(np.log2(size / 256)) - 1)
  return -(-size // step) * step


@jax.jit
def _hit_scores(vectors, regions, regions_valid):
  """VecSim of eq. (7) of retrieved regions, maximised over the query's.

  Args:
    vectors: float32 or float16 (U, D) retrieved regions, scored in float32.
    regions: float32 (Mq, D) the query's regions; regions_valid: bool (Mq,).

  Returns:
    float32 (U,) best inner product with a valid query region.
  """
  pairs = vectors.astype(jnp.float32) @ regions.T
  return jnp.max(jnp.where(regions_valid[None], pairs, -jnp.inf), axis=1)


def _candidates(region_index, database, regions, regions_valid, labels,
                approximate, shortlist, *, rescore):
  """The best `shortlist` images of one query by the per-image max of its hits.

  Args:
    region_index: RegionIndex the labels come from.
    database: float32 or float16 (N, M, D) ndarray, the indexed descriptors.
    regions: float32 (Mq, D) the query's regions; regions_valid: bool (Mq,).
    labels: int64 (Mq, H) FAISS labels of their hits (-1: no hit).
    approximate: float32 (Mq, H) the index's scores of the hits.
    shortlist: S.
    rescore: score each retrieved region exactly (float32), against every
      query region (eq. 7's VecSim, maximised over the query's regions),
      instead of taking the index's score.

  Returns:
    int64 (S,) image rows, best first, -1 padded.
  """
  hit = labels >= 0
  if rescore:
    retrieved = np.unique(labels[hit])
    images = region_index.image_ids[retrieved]
    rows = images * database.shape[1] + region_index.region_ids[retrieved]
    vectors = np.take(database.reshape(-1, database.shape[-1]),
                      np.pad(rows, (0, _bucket(rows.size) - rows.size)),
                      axis=0)
    scores = np.asarray(_hit_scores(vectors, regions,
                                    regions_valid))[:rows.size]
  else:
    images, scores = region_index.image_ids[labels[hit]], approximate[hit]
  unique, inverse = np.unique(images, return_inverse=True)
  best = np.full(unique.shape, -np.inf, np.float32)
  np.maximum.at(best, inverse, scores)  # per-image max
  top = unique[np.argsort(-best, kind='stable')[:shortlist]]
  return np.pad(top, (0, shortlist - top.size), constant_values=-1)


@functools.partial(jax.jit, static_argnames=('qe', 'n_qe', 'include_query'))
def _rerank(query, query_valid, candidates, candidates_valid, *, qe, n_qe,
            include_query):
  """Exact eq. (7) (and eq. 8) of each query against its own candidates.

  Args:
    query: float32 (Q, Mq, D); query_valid: bool (Q, Mq).
    candidates: float32 or float16 (Q, S, Mt, D), scored in float32;
      candidates_valid: bool (Q, S, Mt).

  Returns:
    float32 (Q, S) scores and int32 (Q, S) best-matched candidate region.
  """

  def rerank_one(regions, regions_valid, targets, targets_valid):
    scores, best = similarity.image_similarity(  # eq. (7)
        regions[None], regions_valid[None], targets, targets_valid,
        chunk_size=targets.shape[0])
    if qe:
      scores = similarity.query_expansion(  # eq. (8)
          regions[None], targets, targets_valid, scores, best, n_qe=n_qe,
          include_query=include_query, query_valid=regions_valid[None],
          chunk_size=targets.shape[0])
    return scores[0], best[0]

  return jax.vmap(rerank_one)(query, query_valid,
                              candidates.astype(jnp.float32), candidates_valid)


def search(region_index, database, database_valid, query, query_valid, *,
           k_regions=100, shortlist=1000, qe=False, n_qe=10,
           include_query=False, nprobe=None, ef_search=None, rescore=True,
           query_batch=16):
  """Ranks the database for each query: region index, then exact eq. (7).

  Args:
    region_index: RegionIndex built on `database`.
    database: float32 or float16 (N, M, D) the indexed descriptors (e.g. a
      memory map); only the retrieved regions and the shortlisted images
      are read.
    database_valid: bool (N, M) valid database regions.
    query: float (Q, Mq, D) l2-normalised whitened query regions.
    query_valid: bool (Q, Mq) valid query regions.
    k_regions: regions retrieved per valid query region.
    shortlist: S, candidate images re-ranked exactly per query.
    qe: apply eq. (8) query expansion on the shortlist.
    n_qe: N_QE of eq. (8) (capped at S).
    include_query: eq. (8) variant of `similarity.query_expansion`.
    nprobe: ivfpq lists probed (None: the index option).
    ef_search: hnsw search depth (None: the index option).
    rescore: shortlist by the exact scores of the retrieved regions (read
      from `database`) instead of the index's approximate ones; the
      per-image max is then a lower bound of eq. (7), exact whenever the
      best region pair was retrieved.
    query_batch: queries re-ranked at once (largest temporary: float32
      (query_batch, S, M, D) gathered candidates).

  Returns:
    float32 (Q, S) scores best first (-inf pads), int64 (Q, S) database rows
    (-1 pads when fewer than S images were retrieved), int32 (Q, S)
    best-matched database region (eq. 7).

  Raises:
    ValueError: shapes that do not match each other or the index.
    TypeError: non-floating descriptors or non-boolean masks.
  """
  query, query_valid = np.asarray(query), np.asarray(query_valid)
  database_valid = np.asarray(database_valid)
  _check_regions('query', query, query_valid)
  _check_regions('database', database, database_valid)
  metadata = region_index.metadata
  if (database.shape[0], database.shape[1:]) != (
      metadata['num_images'], (metadata['num_regions'], metadata['D'])):
    raise ValueError(f'database {database.shape} is not the indexed '
                     f"({metadata['num_images']}, {metadata['num_regions']}, "
                     f"{metadata['D']})")
  if query.shape[-1] != metadata['D']:
    raise ValueError(f"query D={query.shape[-1]} != index D={metadata['D']}")
  if k_regions < 1 or shortlist < 1 or query_batch < 1:
    raise ValueError('k_regions, shortlist and query_batch must be >= 1, got '
                     f'{k_regions}, {shortlist}, {query_batch}')
  database = np.asarray(database)  # a memory map stays one
  num_queries = query.shape[0]
  labels = np.full(query_valid.shape + (k_regions,), -1, np.int64)
  found = np.full(labels.shape, -np.inf, np.float32)
  if query_valid.any():
    found[query_valid], labels[query_valid] = region_index.index.search(
        np.ascontiguousarray(query[query_valid], dtype=np.float32), k_regions,
        params=_search_parameters(region_index, nprobe, ef_search))
  candidates = np.stack([
      _candidates(region_index, database, np.asarray(query[q], np.float32),
                  query_valid[q], labels[q], found[q], shortlist,
                  rescore=rescore)
      for q in range(num_queries)])
  outputs = [], [], []
  query_batch = min(query_batch, num_queries)
  for start in range(0, num_queries, query_batch):
    rows = np.arange(start, start + query_batch) % num_queries  # pad by wrap
    batch = candidates[rows]
    gathered = np.take(database, np.maximum(batch, 0), axis=0)  # cast on device
    gathered_valid = database_valid[np.maximum(batch, 0)] & (batch >= 0)[
        ..., None]
    batch_scores, batch_best = _rerank(
        np.asarray(query[rows], np.float32), query_valid[rows], gathered,
        gathered_valid, qe=qe, n_qe=min(n_qe, shortlist),
        include_query=include_query)
    batch_scores, batch_best = np.asarray(batch_scores), np.asarray(batch_best)
    order = np.argsort(-batch_scores, axis=1, kind='stable')
    count = min(query_batch, num_queries - start)
    for output, values in zip(outputs, (batch_scores, batch, batch_best)):
      output.append(np.take_along_axis(values, order, axis=1)[:count])
  scores, ranks, best = (np.concatenate(output) for output in outputs)
  return scores, np.where(np.isfinite(scores), ranks, -1), best
