"""A dataset's stores and fits, kept in the workdir and reused.

  open_dataset / load_dataset  a datasets.Dataset by name (config.eval)
  prepare                      its database store and PCA-whitening (eq. 6)
  method_stores                its stores of several methods (the demo)
  query_boxes                  the crops its queries are encoded with
  query_store                  its queries (cropped or database rows)
  encode_queries               other images encoded like the database
  search_index                 the database's FAISS region index
  search_graph                 the database's region graph (diffusion)
  rank                         retrieval.search with the index and graph
  dataset_ranks                store-row rankings -> dataset indices

Stores live in <workdir>/stores/<dataset>-<role>-<store hash>[-raw: no
EXIF][-<U^1 hash>][-w<whitening hash>], written in shards and resumed after a crash
(store_io.build_store); fits in <workdir>/fits/<dataset>-<store hash>-<fit
hash>; indexes in <workdir>/indexes; diffusion's region graphs in
<workdir>/graphs. A finished one is reused when it
matches the config; a store made with other settings is refused. One run
at a time reads or writes a store (storage.locks: <workdir>/locks/<store
name>.lock); another run of the same workdir waits for it.

A store's shards record the fingerprints of their images
(storage.fingerprints): a shard holding an image replaced since is encoded
again, a store whose U^1 was fitted on such an image is encoded anew, and
fits, indexes and graphs carry the hash of the images' contents, so a rerun
after an image changed gives what a fresh workdir gives.
"""

import contextlib
import os
import shutil

from absl import logging
import jax
import numpy as np

from regagg_jax.evaluation import datasets
from regagg_jax.evaluation import sources
from regagg_jax.evaluation import folders
from regagg_jax.storage import fingerprints
from regagg_jax.storage import provenance
from regagg_jax.storage import records
from regagg_jax.encoding import parallel
from regagg_jax.experiment import indexing
from regagg_jax.experiment import pipeline
from regagg_jax.aggregation import method_table
from regagg_jax.search import graph
from regagg_jax.search import region_index
from regagg_jax.search import rerank
from regagg_jax.experiment import retrieval
from regagg_jax.storage import graphs
from regagg_jax.storage import locks
from regagg_jax.storage import store_io


def _take(store, positions):
  """The rows `positions` of a store, as a store."""
  metadata = dict(
    store.metadata,
    rows=[store.metadata['rows'][p] for p in positions],
    sizes=[store.metadata['sizes'][p] for p in positions],
  )
  return store._replace(
    descriptors=store.descriptors[positions],
    valid=store.valid[positions],
    masks=store.masks[positions],
    grid=store.grid[positions],
    image_paths=tuple(store.image_paths[p] for p in positions),
    metadata=metadata,
  )


def open_dataset(config, name, root, *, ground_truth=True):
  """A datasets.Dataset by name ('folder': any folder) with images in root.

  With ground_truth=False a folder without a ground-truth file is just its
  images (enough to encode, fit and search).
  """
  if name == 'folder':
    gnd = os.path.join(root, folders.FOLDER_GROUND_TRUTH)
    if ground_truth or os.path.isfile(gnd):
      return folders.load_folder(root)
    return datasets.Dataset(
      name=os.path.basename(os.path.normpath(root)),
      protocol='custom',
      images=tuple(folders.list_images(root)),
      queries=(),
      query_indices=np.zeros(0, np.int64),
      boxes=None,
      positives=(),
      junk=(),
      image_root=root,
    )
  return datasets.load(
    name,
    ground_truth_root=config.eval.gnd_dir or None,
    image_root=root or None,
    rotation_file=config.eval.rotation_file or None,
  )


def load_dataset(config, *, ground_truth=True):
  """The dataset of config.eval (see `open_dataset`)."""
  return open_dataset(
    config, config.eval.dataset, config.eval.root, ground_truth=ground_truth
  )


def rotations(dataset, names):
  """Clockwise degrees of the named images of a dataset (0 if unlisted)."""
  return [dataset.rotations.get(n, 0) for n in names]


def _made_once(path, load, make, save, name):
  """load(path), or make() and save(path, value) when it gives None, on
  process 0; the other processes load it after the barrier `name`."""
  value = None
  if jax.process_index() == 0:
    value = load(path)
    if value is None:
      value = make()
      save(path, value)
      logging.info('wrote %s', path)
    else:
      logging.info('reusing %s', path)
  parallel.barrier(name)
  return load(path) if value is None else value


def _cached(path, make, expected, *, load, save):
  """The fit (or index) at `path` if its metadata has `expected`, else
  make() saved there (by one process only: orbax checkpoints of several
  processes are collective)."""

  def matching(path):
    if not os.path.isdir(path):
      return None
    try:
      value = load(path)
    except ValueError as error:  # corrupt or partial: made again
      logging.warning('replacing %s: %s', path, error)
      return None
    return (
      value
      if all(value.metadata.get(k) == v for k, v in expected.items())
      else None
    )

  def single(*args):
    if jax.process_count() > 1:
      raise ValueError(
        f'{path} is missing or stale: make it with one process '
        '(--mode=fit) before encoding with several'
      )
    return make(*args)

  return _made_once(path, matching, single, save, f'made {path}')


def _current_reduction(path, paths, fitted_rows):
  """U^1 kept in the store at path, or None (the store removed) when
  images it was fitted on changed since: every descriptor depends on it."""
  stale = sorted(set(fingerprints.store_changes(path)) & set(fitted_rows))
  if stale:
    logging.warning(
      'U^1 (eq. 4) of %s was fitted on %s changed since: the store is '
      'encoded anew',
      path,
      fingerprints.describe(stale, paths),
    )
    shutil.rmtree(path)
  return store_io.load_reduction(path)


def _dataset_store(
  config,
  dataset,
  role,
  paths,
  names,
  *,
  reduction=None,
  whitening=None,
  boxes=None,
):
  """Encodes images of a dataset into workdir/stores, resumably.

  The store is written in shards of features.shard_size images
  (store_io.build_store): a killed run resumes where it stopped, a
  finished store is reused, one made with other settings is refused. With
  several processes (parallel.initialize) each encodes its process_shards
  and process 0 finalises the store.

  Args:
    config: ConfigDict.
    dataset: datasets.Dataset the images belong to (rotations, apply_exif).
    role: part of the store's folder name, e.g. 'database'.
    paths: the image files.
    names: their dataset names (keys of dataset.rotations).
    reduction: U^1 (eq. 4) to encode with (queries: the database's), or
      None to fit it on these images (pooling.reduction_images of them).
    whitening: PCAParams of eq. (6) to store whitened descriptors, or None.
    boxes: float (N, 4) query crops, or None.

  Returns:
    records.Store.
  """
  key = f'{dataset.name}-{role}-{pipeline.store_hash(config)}'
  if not dataset.apply_exif:
    key += '-raw'  # pixels as stored, EXIF orientation ignored
  if reduction is not None:
    key += f'-{records.hash_params(reduction)}'
  if whitening is not None:
    key += f'-w{records.hash_params(whitening)}'
  path = os.path.join(config.workdir, 'stores', key)
  with _one_writer(os.path.join(config.workdir, 'locks', f'{key}.lock')):
    return _write_store(
      config, dataset, key, path, paths, reduction, whitening, boxes, names
    )


@contextlib.contextmanager
def _one_writer(lock):
  """Process 0 holds a store's lock (storage.locks) while this run's
  processes, after a barrier, read or write it: another run of the same
  workdir waits (the processes of one run write disjoint shards)."""
  first = jax.process_index() == 0
  with locks.hold(lock) if first else contextlib.nullcontext():
    parallel.barrier(f'locked {lock}')
    yield


def _write_store(
  config, dataset, key, path, paths, reduction, whitening, boxes, names
):
  """`_dataset_store`'s encode or reuse of the store at path, locked."""
  reading = dict(
    boxes=boxes,
    rotations=rotations(dataset, names),
    apply_exif=dataset.apply_exif,
  )
  if reduction is None and method_table.POOLING[config.pooling.method].reduced:
    fitted_rows = pipeline.sample_rows(
      len(paths), config.pooling.reduction_images
    )
    reduction = _made_once(  # U^1 of eq. (4), fitted once, kept in the store
      path,
      lambda p: _current_reduction(p, paths, fitted_rows),
      lambda: pipeline.fit_reduction(config, paths, **reading),
      lambda p, r: store_io.build_store(
        p,
        None,
        image_paths=paths,
        header=pipeline.store_header(
          config,
          paths,
          reduction=r,
          whitening=whitening,
          apply_exif=dataset.apply_exif,
        ),
        shard_size=config.features.shard_size,
        dtype=config.features.store_dtype,
        shards=[],
        reduction=r,
      ),
      f'U1 {key}',
    )
  header = pipeline.store_header(
    config,
    paths,
    reduction=reduction,
    whitening=whitening,
    apply_exif=dataset.apply_exif,
  )
  if os.path.isfile(os.path.join(path, 'metadata.json')):  # finished
    try:
      store = store_io.load_store(path)
    except ValueError as error:  # build_store re-encodes damaged shards
      logging.warning('repairing %s: %s', path, error)
      store = None
    if store is not None and all(
      store.metadata.get(k) == v for k, v in header.items()
    ):
      logging.info('reusing %s', path)
      return _with_inputs(store, path)
  num_shards = -(-len(paths) // config.features.shard_size)
  finished = store_io.build_store(
    path,
    lambda rows: pipeline.encode_rows(
      config, paths, rows, reduction=reduction, whitening=whitening, **reading
    ),
    image_paths=paths,
    header=header,
    shard_size=config.features.shard_size,
    dtype=config.features.store_dtype,
    shards=parallel.process_shards(num_shards),
    reduction=reduction,
  )
  parallel.barrier(f'encoded {key}')
  if jax.process_index() == 0 and not finished:
    store_io.finalize_store(path)
  parallel.barrier(f'finalised {key}')
  return _with_inputs(store_io.load_store(path), path)


def method_stores(config, dataset, methods):
  """Every method's database store from one VGG19 pass (--mode=demo), kept
  resumably in <workdir>/stores/<dataset>-methods[-raw]
  (pipeline.encode_methods with a directory), one run at a time (its
  storage.locks lock)."""
  key = f'{dataset.name}-methods' + ('' if dataset.apply_exif else '-raw')
  with _one_writer(os.path.join(config.workdir, 'locks', f'{key}.lock')):
    return pipeline.encode_methods(
      config,
      datasets.database_paths(dataset),
      methods,
      rotations=rotations(dataset, dataset.images),
      apply_exif=dataset.apply_exif,
      directory=os.path.join(config.workdir, 'stores', key),
    )


def _with_inputs(store, path):
  """The store with the fingerprints_hash of its images (storage.
  fingerprints.digest) in its metadata: fits, indexes and graphs of it
  are keyed by it, so they are made again when its images change."""
  return store._replace(
    metadata=dict(store.metadata, fingerprints_hash=fingerprints.digest(path))
  )


def _fitting_store(config, database=None):
  """The store PCA-whitening is fitted on: pca.fit_on's images (with the
  database's U^1 when given) or None for the database itself."""
  if not config.pca.fit_on:
    return None, None
  other = open_dataset(
    config, config.pca.fit_on, config.pca.fit_root, ground_truth=False
  )
  return other.name, _dataset_store(
    config,
    other,
    'fitting',
    datasets.database_paths(other),
    other.images,
    reduction=None if database is None else database.reduction,
  )


def _fit(config, name, store, fitted_on):
  """The whitening fitted on store, kept until the store's images change
  (their fingerprints_hash, storage.fingerprints.digest)."""
  inputs = {'fingerprints_hash': store.metadata.get('fingerprints_hash')}

  def make():
    fitted = pipeline.fit(config, store, fitted_on=fitted_on)
    return fitted._replace(metadata=dict(fitted.metadata, **inputs))

  return _cached(
    os.path.join(
      config.workdir,
      'fits',
      f'{name}-{pipeline.store_hash(config)}-{pipeline.fit_hash(config)}',
    ),
    make,
    {
      'config_hash': pipeline.store_hash(config),
      'fit_hash': pipeline.fit_hash(config),
      'reduction_hash': store.metadata['reduction_hash'],
      **inputs,
    },
    load=records.load_fit,
    save=records.save_fit,
  )


def database_images(config, dataset):
  """The database: the dataset's images, then eval.distractors' (if set).

  Distractors (e.g. R1M, sources.DISTRACTORS) get rows after the
  dataset's images, so ground-truth indices are unchanged and they only
  count as irrelevant.

  Returns:
    (store role, image paths, names).

  Raises:
    ValueError: distractors with the UKBench protocol (scored by group).
  """
  paths, names = datasets.database_paths(dataset), list(dataset.images)
  folder = config.eval.distractors
  if not folder:
    return 'database', paths, names
  if dataset.protocol == 'ukbench':
    raise ValueError(
      'eval.distractors cannot be used with UKBench, whose '
      'N-S score counts groups of the top 4'
    )
  extra = folders.list_images(sources.check_folder(folder, 'distractors'))
  logging.info('%d distractors from %s', len(extra), folder)
  return (
    f'database+{os.path.basename(os.path.normpath(folder))}',
    paths + [os.path.join(folder, n) for n in extra],
    names + extra,
  )


def prepare(config, dataset, *, fit=True):
  """The dataset's database store and its PCA-whitening (eq. 6).

  By default the database is encoded first (U^1 fitted on it) and the
  whitening is fitted on it or on pca.fit_on's images encoded with its U^1.
  With pca.store_whitened, U^1 and the whitening are both learnt on
  pca.fit_on first, and the database is stored whitened (D dims): the
  layout for millions of images.

  Args:
    config: ConfigDict.
    dataset: datasets.Dataset.
    fit: also fit the whitening when the store does not need it (False:
      --mode=encode).

  Returns:
    (database records.Store, records.Fit or None when not `fit`).

  Raises:
    ValueError: pca.store_whitened without pca.fit_on.
  """
  role, paths, names = database_images(config, dataset)
  if config.pca.store_whitened:
    if not config.pca.fit_on:
      raise ValueError(
        'pca.store_whitened needs pca.fit_on: the whitening '
        'is learnt on another image set before the database '
        'is encoded'
      )
    fitted_on, store = _fitting_store(config)
    fitted = _fit(config, fitted_on, store, fitted_on)
    return _dataset_store(
      config,
      dataset,
      role,
      paths,
      names,
      reduction=fitted.reduction,
      whitening=fitted.whitening,
    ), fitted
  database = _dataset_store(config, dataset, role, paths, names)
  if not fit:
    return database, None
  fitted_on, store = _fitting_store(config, database)
  return database, _fit(
    config, dataset.name, store or database, fitted_on or dataset.name
  )


def _stored_whitening(database, fitted):
  """The whitening a store was encoded with (None: unwhitened)."""
  if not provenance.is_whitened(database.metadata):
    return None
  return fitted.whitening


def query_boxes(config, dataset):
  """float (Q, 4) crops the queries are encoded with (eval.crop_queries
  and the dataset has boxes), else None."""
  if config.eval.crop_queries and dataset.boxes is not None:
    return dataset.boxes
  return None


def query_store(config, dataset, database, fitted):
  """Query descriptors: database rows for uncropped in-database queries,
  else the (cropped) query images encoded like the database (its U^1, and
  its whitening when stored whitened).

  Returns:
    (store, positions): positions int (Q,) of each query's store row, -1 for
    an unreadable query.
  """
  boxes = query_boxes(config, dataset)
  if boxes is None and np.all(dataset.query_indices >= 0):
    where = {row: p for p, row in enumerate(database.metadata['rows'])}
    positions = np.array([where.get(q, -1) for q in dataset.query_indices])
    present = positions >= 0
    return (
      _take(database, positions[present]),
      np.where(present, np.cumsum(present) - 1, -1),
    )
  paths = datasets.query_paths(dataset)
  store = _dataset_store(
    config,
    dataset,
    f'queries-{"full" if boxes is None else "cropped"}',
    paths,
    dataset.queries,
    reduction=database.reduction,
    whitening=_stored_whitening(database, fitted),
    boxes=boxes,
  )
  where = {row: p for p, row in enumerate(store.metadata['rows'])}
  return store, np.array([where.get(q, -1) for q in range(len(paths))])


def encode_queries(config, paths, database, fitted, *, boxes=None):
  """Images encoded like the database, in memory (--mode=search)."""
  return pipeline.encode(
    config,
    paths,
    boxes=boxes,
    reduction=database.reduction,
    whitening=_stored_whitening(database, fitted),
  )


def _contents(database):
  """What an index or graph is named by besides settings: the database's
  image contents (`_with_inputs`)."""
  return database.metadata.get('fingerprints_hash')


def search_index(config, dataset, database, fitted):
  """The database's FAISS region index (search.index), built once and kept
  in workdir/indexes; None for search.index 'exact'."""
  if config.search.index == 'exact':
    return None
  kind = config.search.index
  options = config.search[kind].to_dict() if kind in config.search else {}
  name = (
    f'{dataset.name}-{pipeline.store_hash(config)}-'
    f'{pipeline.fit_hash(config)}-{kind}-'
    f'{records.hash_config([options, _contents(database)])}'
  )
  expected = dict(
    indexing.index_expectation(database, fitted),
    num_images=len(database.image_paths),
  )
  return _cached(
    os.path.join(config.workdir, 'indexes', name),
    lambda: indexing.build_index(config, database, fitted),
    expected,
    load=region_index.load,
    save=region_index.save,
  )


def search_graph(config, dataset, database, fitted, regions=None):
  """The database's region graph of diffusion (search.rerank 'diffusion'),
  built once (resumably) and kept in workdir/graphs, named by the store's
  hash like the fits; a damaged one is built again. None for other
  re-rankings."""
  if not rerank.RERANK[retrieval.rerank_name(config.search)].diffusion:
    return None
  expected = indexing.graph_expectation(config, database, fitted)
  name = (
    f'{dataset.name}-{pipeline.store_hash(config)}-'
    f'{pipeline.fit_hash(config)}-'
    f'{records.hash_config([expected, _contents(database)])}'
  )
  path = os.path.join(config.workdir, 'graphs', name)

  def finished(path):
    if not os.path.isfile(os.path.join(path, 'metadata.json')):
      return None
    try:
      return graph.RegionGraph(*graphs.load_graph(path, expected=expected))
    except ValueError as error:  # damaged or stale: built again
      logging.warning('replacing %s: %s', path, error)
      shutil.rmtree(path)
      return None

  return _made_once(
    path,
    finished,
    lambda: indexing.build_graph(config, database, fitted, path, regions),
    lambda *_: None,  # build_graph writes it shard by shard
    f'made {path}',
  )


def rank(config, dataset, queries, database, fitted):
  """retrieval.search with the database's region index and region graph
  (`search_index`, `search_graph`: made once, None when not needed)."""
  regions = search_index(config, dataset, database, fitted)
  return retrieval.search(
    config,
    queries,
    database,
    fitted,
    regions,
    search_graph(config, dataset, database, fitted, regions),
  )


def dataset_ranks(ranking, database, positions):
  """Store-row rankings -> int (Q, N') dataset indices, one row per query.

  An unreadable query (position -1) gets the database in index order.
  """
  rows = np.asarray(database.metadata['rows'], np.int64)
  ranks = np.tile(rows, (len(positions), 1))
  present = positions >= 0
  ranks[present] = rows[ranking.ranks[positions[present]]]
  return ranks
