"""FAISS index over region vectors (eq. 7's VecSim), built, saved and loaded.

Region descriptors are l2-normalised and whitened (eq. 6), so VecSim of
eq. (7) is the inner product and every index kind uses it:

  'flat'   exact IndexFlatIP.
  'ivfpq'  IndexIVFPQ: `nlist` inverted lists (0: the power of two nearest
           sqrt(V), 64 .. 65536; k-means on `train_size` valid
           vectors), residuals coded with `m` sub-quantizers of `nbits` bits.
           `coarse='hnsw'` assigns vectors to lists through an HNSW graph over
           the centroids (fast at millions of vectors). `fast_scan` (with
           nbits=4) uses IndexIVFPQFastScan: codes scanned with SIMD lookups,
           several times faster per byte of code. The exact re-scoring and
           re-rank of `region_search` are the refinement stage: they read the
           stored descriptors, so the index keeps no second copy of them.
  'hnsw'   IndexHNSWFlat (`hnsw_m` links, `ef_construction`, `ef_search`).

Only valid regions are added; `image_ids` / `region_ids` map a FAISS label
(the vector's ordinal among the valid regions, row-major) back to (n, m).
Searching is `index_search.search`.

Public: RegionIndex, DEFAULT_OPTIONS, FORMAT_VERSION, build, save, load,
check_regions.
"""

import hashlib
import json
import os
from typing import Any, NamedTuple

import numpy as np

from regagg_jax.storage import atomic
from regagg_jax.storage import provenance


FORMAT_VERSION = 1
"""Version of the saved layout; `load` refuses others."""

DEFAULT_OPTIONS = {
  'flat': {},
  'ivfpq': {
    'nlist': 0,
    'm': 64,
    'nbits': 8,
    'fast_scan': False,
    'nprobe': 16,
    'train_size': 100_000,
    'coarse': 'hnsw',
    'hnsw_m': 32,
    'quantizer_ef_search': 64,
    'seed': 0,
  },
  'hnsw': {'hnsw_m': 32, 'ef_construction': 80, 'ef_search': 128},
}
"""kind -> its options and their defaults."""


def load_faiss():
  """The faiss module, imported on first use (the optional extra 'faiss').

  Raises:
    ImportError: faiss is not installed, with the command that installs it.
  """
  try:
    import faiss  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ImportError(
      'search.index other than "exact" needs FAISS: pip install '
      '"regagg_jax[faiss]" (or faiss-cpu)'
    ) from error
  return faiss


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


def check_regions(name, descriptors, valid):
  """Raises ValueError / TypeError unless descriptors (N, M, D) are floating
  and valid is bool (N, M); `name` names them in the message."""
  if descriptors.ndim != 3:
    raise ValueError(
      f'{name} must be (images, regions, D), got shape {descriptors.shape}'
    )
  if not np.issubdtype(descriptors.dtype, np.floating):
    raise TypeError(
      f'{name} must be float32 or float16, got {descriptors.dtype}'
    )
  if valid.shape != descriptors.shape[:2]:
    raise ValueError(
      f'{name}_valid must be {descriptors.shape[:2]}, got {valid.shape}'
    )
  if valid.dtype != np.bool_:
    raise TypeError(f'{name}_valid must be bool, got {valid.dtype}')


def _resolve_options(kind, options):
  if kind not in DEFAULT_OPTIONS:
    raise ValueError(
      f'kind must be one of {sorted(DEFAULT_OPTIONS)}, got {kind!r}'
    )
  unknown = set(options or {}) - set(DEFAULT_OPTIONS[kind])
  if unknown:
    raise ValueError(
      f'unknown {kind} options {sorted(unknown)}; allowed: '
      f'{sorted(DEFAULT_OPTIONS[kind])}'
    )
  return dict(DEFAULT_OPTIONS[kind], **(options or {}))


def _make_index(kind, dim, options):
  faiss = load_faiss()
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
    raise ValueError(
      f"ivfpq coarse must be 'hnsw' or 'flat', got {options['coarse']!r}"
    )
  if dim % options['m']:
    raise ValueError(f'ivfpq m={options["m"]} must divide D={dim}')
  if options['fast_scan'] and options['nbits'] != 4:
    raise ValueError(f'ivfpq fast_scan needs nbits=4, got {options["nbits"]}')
  kind = faiss.IndexIVFPQFastScan if options['fast_scan'] else faiss.IndexIVFPQ
  index = kind(
    quantizer, dim, options['nlist'], options['m'], options['nbits'], metric
  )
  index.own_fields = True
  quantizer.this.disown()  # the IVF index frees it
  index.cp.seed = options['seed']
  return index


def _valid_vectors(descriptors, valid, start, stop):
  """float32 (n, D) valid region vectors of images [start, stop)."""
  block = descriptors[start:stop].reshape(-1, descriptors.shape[-1])
  return np.ascontiguousarray(
    block[valid[start:stop].reshape(-1)], dtype=np.float32
  )


def build(
  descriptors,
  valid,
  *,
  kind='flat',
  options=None,
  metadata=None,
  add_batch=65536,
):
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
  check_regions('descriptors', descriptors, valid)
  options = _resolve_options(kind, options)
  num_images, num_regions, dim = descriptors.shape
  image_ids, region_ids = np.nonzero(valid)
  if not image_ids.size:
    raise ValueError('descriptors have no valid region to index')
  if kind == 'ivfpq' and not options['nlist']:
    options['nlist'] = int(
      np.clip(2 ** round(np.log2(np.sqrt(image_ids.size))), 64, 65536)
    )
  index = _make_index(kind, dim, options)
  if not index.is_trained:
    rng = np.random.default_rng(options['seed'])
    size = min(options['train_size'], image_ids.size)
    sample = np.sort(rng.choice(image_ids.size, size, replace=False))
    # k-means of the coarse centroids on a flat index, not on the HNSW graph.
    clustering = load_faiss().IndexFlatIP(dim)
    index.clustering_index = clustering
    index.train(
      np.ascontiguousarray(
        descriptors[image_ids[sample], region_ids[sample]], dtype=np.float32
      )
    )
    index.clustering_index = None
    if options['coarse'] == 'hnsw':
      load_faiss().downcast_index(index.quantizer).hnsw.efSearch = options[
        'quantizer_ef_search'
      ]
  step = max(1, add_batch // num_regions)
  for start in range(0, num_images, step):
    index.add(_valid_vectors(descriptors, valid, start, start + step))
  metadata = dict(
    {'whitening_hash': 'none', 'store_hash': 'none'},
    **(metadata or {}),
    kind=kind,
    options=options,
    D=dim,
    num_images=num_images,
    num_regions=num_regions,
    num_vectors=int(image_ids.size),
  )
  return RegionIndex(
    index, image_ids.astype(np.int64), region_ids.astype(np.int32), metadata
  )


def _checksums(path):
  """{file name: sha256} of the index files in directory `path`."""
  digests = {}
  for name in ('index.faiss', 'ids.npz'):
    digest = hashlib.sha256()
    with open(os.path.join(path, name), 'rb') as stream:
      for block in iter(lambda: stream.read(1 << 20), b''):
        digest.update(block)
    digests[name] = digest.hexdigest()
  return digests


def save(path, region_index):
  """Writes index.faiss, ids.npz and metadata.json into directory `path`.

  Written under a temporary name, then renamed (atomic.replace_directory).
  """

  def write(directory):
    load_faiss().write_index(
      region_index.index, os.path.join(directory, 'index.faiss')
    )
    np.savez(
      os.path.join(directory, 'ids.npz'),
      image_ids=region_index.image_ids,
      region_ids=region_index.region_ids,
    )
    with open(os.path.join(directory, 'metadata.json'), 'w') as stream:
      json.dump(
        dict(
          region_index.metadata,
          format_version=FORMAT_VERSION,
          sha256=_checksums(directory),
        ),
        stream,
        indent=1,
      )

  atomic.replace_directory(write, path)


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
  advice = f'delete {path} and run the same command again to rebuild it'
  try:
    with open(file) as stream:
      metadata = json.load(stream)
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    raise ValueError(f'{file} is corrupt ({error}); {advice}') from error
  if metadata.pop('format_version', None) != FORMAT_VERSION:
    raise ValueError(f'{file} is not format version {FORMAT_VERSION}')
  provenance.check_stale(
    f'region index {file}', metadata, expected or {}, 'build it again'
  )
  if metadata.pop('sha256', None) != _checksums(path):
    raise ValueError(
      f'{path}: index.faiss or ids.npz does not match the sha256 in {file} '
      f'(a damaged file, or an index older than its checksums); {advice}'
    )
  try:
    index = load_faiss().read_index(os.path.join(path, 'index.faiss'))
    with np.load(os.path.join(path, 'ids.npz')) as ids:
      image_ids, region_ids = ids['image_ids'], ids['region_ids']
  except (RuntimeError, OSError, EOFError, KeyError, ValueError) as error:
    raise ValueError(
      f'{path}: index.faiss or ids.npz is unreadable ({error}); {advice}'
    ) from error
  if not index.ntotal == image_ids.size == metadata['num_vectors'] or (
    index.d != metadata['D']
  ):
    raise ValueError(
      f'{path}: index.faiss holds {index.ntotal} vectors of '
      f'D={index.d}, ids.npz {image_ids.size}, {file} says '
      f'{metadata["num_vectors"]} of D={metadata["D"]}'
    )
  return RegionIndex(index, image_ids, region_ids, metadata)
