"""A dataset, its database store, fits and queries, kept in the workdir.

  open_dataset / load_dataset  a datasets.Dataset by name (config.eval)
  database_images              its database: images, then distractors
  prepare                      its database store and PCA-whitening (eq. 6)
  query_boxes                  the crops its queries are encoded with
  query_store                  its queries (cropped or database rows)
  encode_queries               other images encoded like the database
  cached                       a fit or index kept while its metadata matches

Stores are `stores`' (encoded once, resumably, one writer at a time); fits
live in <workdir>/fits/<dataset>-<store hash>-<fit hash>, made by one
process and reused when they match the config and the hash of the store's
image contents (fingerprints_hash), so a rerun after an image changed gives
what a fresh workdir gives. The region index, graph and rankings of a run
are `ranking`'s.
"""

import os

from absl import logging
import jax
import numpy as np

from regagg_jax.evaluation import datasets
from regagg_jax.evaluation import folders
from regagg_jax.evaluation import sources
from regagg_jax.experiment import fitting
from regagg_jax.experiment import pipeline
from regagg_jax.experiment import settings
from regagg_jax.experiment import stores
from regagg_jax.storage import provenance
from regagg_jax.storage import records


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


def cached(path, make, expected, *, load, save):
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

  return stores.made_once(path, matching, single, save, f'made {path}')


def _fitting_store(config, database=None):
  """The store PCA-whitening is fitted on: pca.fit_on's images (with the
  database's U^1 when given) or None for the database itself."""
  if not config.pca.fit_on:
    return None, None
  other = open_dataset(
    config, config.pca.fit_on, config.pca.fit_root, ground_truth=False
  )
  return other.name, stores.dataset_store(
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
    fitted = fitting.fit(config, store, fitted_on=fitted_on)
    return fitted._replace(metadata=dict(fitted.metadata, **inputs))

  return cached(
    os.path.join(
      config.workdir,
      'fits',
      f'{name}-{settings.store_hash(config)}-{settings.fit_hash(config)}',
    ),
    make,
    {
      'config_hash': settings.store_hash(config),
      'fit_hash': settings.fit_hash(config),
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
    return stores.dataset_store(
      config,
      dataset,
      role,
      paths,
      names,
      reduction=fitted.reduction,
      whitening=fitted.whitening,
    ), fitted
  database = stores.dataset_store(config, dataset, role, paths, names)
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
  store = stores.dataset_store(
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
