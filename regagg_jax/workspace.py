"""A dataset's stores and fits, kept in the workdir and reused.

  open_dataset / load_dataset  a datasets.Dataset by name (config.eval)
  database_store               its database, encoded or reused
  fitted_whitening             PCA-whitening (eq. 6) on pca.fit_on, or reused
  query_store                  its queries (cropped or database rows)
  dataset_ranks                store-row rankings -> dataset indices

Stores live in <workdir>/stores/<dataset>-<role>-<store hash>[-<U^1 hash>]
and fits in <workdir>/fits/<dataset>-<store hash>-<fit hash>; one is reused
when its metadata matches the config, else made again.
"""

import os

from absl import logging
import numpy as np

from regagg_jax import datasets
from regagg_jax import index
from regagg_jax import pipeline


def _take(store, positions):
  """The rows `positions` of a store, as a store."""
  metadata = dict(store.metadata,
                  rows=[store.metadata['rows'][p] for p in positions],
                  sizes=[store.metadata['sizes'][p] for p in positions])
  return store._replace(
      descriptors=store.descriptors[positions], valid=store.valid[positions],
      masks=store.masks[positions], grid=store.grid[positions],
      image_paths=tuple(store.image_paths[p] for p in positions),
      metadata=metadata)


def _cached(path, make, expected, *, load=index.load_store,
            save=index.save_store):
  """Loads the store (or fit) at `path` if its metadata has `expected`,
  else makes it with make() and saves it."""
  if os.path.isdir(path):
    value = load(path)
    if all(value.metadata.get(k) == v for k, v in expected.items()):
      logging.info('reusing %s', path)
      return value
  value = make()
  save(path, value)
  logging.info('wrote %s', path)
  return value


def open_dataset(config, name, root, *, ground_truth=True):
  """A datasets.Dataset by name ('folder': any folder) with images in root.

  With ground_truth=False a folder without a ground-truth file is just its
  images (enough to encode, fit and search).
  """
  if name == 'folder':
    gnd = os.path.join(root, datasets.FOLDER_GROUND_TRUTH)
    if ground_truth or os.path.isfile(gnd):
      return datasets.load_folder(root)
    return datasets.Dataset(
        name=os.path.basename(os.path.normpath(root)), protocol='custom',
        images=tuple(datasets.list_images(root)), queries=(),
        query_indices=np.zeros(0, np.int64), boxes=None, positives=(),
        junk=(), image_root=root)
  return datasets.load(name, ground_truth_root=config.eval.gnd_dir or None,
                       image_root=root or None,
                       rotation_file=config.eval.rotation_file or None)


def load_dataset(config, *, ground_truth=True):
  """The dataset of config.eval (see `open_dataset`)."""
  return open_dataset(config, config.eval.dataset, config.eval.root,
                      ground_truth=ground_truth)


def rotations(dataset, names):
  """Clockwise degrees of the named images of a dataset (0 if unlisted)."""
  return [dataset.rotations.get(n, 0) for n in names]


def _dataset_store(config, dataset, role, paths, names, *, database=None,
                   boxes=None):
  """Encodes (or reuses from workdir/stores) images of a dataset.

  Args:
    config: ConfigDict.
    dataset: datasets.Dataset the images belong to (rotations, apply_exif).
    role: part of the store's folder name, e.g. 'database'.
    paths: the image files.
    names: their dataset names (keys of dataset.rotations).
    database: store whose U^1 (eq. 4) they are encoded with, or None to
      fit U^1 on them (the database itself).
    boxes: float (N, 4) query crops, or None.
  """
  key = f'{dataset.name}-{role}-{pipeline.store_hash(config)}'
  expected = {'config_hash': pipeline.store_hash(config),
              'apply_exif': dataset.apply_exif,
              'inputs_hash': index.hash_config([str(p) for p in paths])}
  reduction = None
  if database is not None:
    key += f'-{database.metadata["reduction_hash"]}'
    expected['reduction_hash'] = database.metadata['reduction_hash']
    reduction = database.reduction
  return _cached(
      os.path.join(config.workdir, 'stores', key),
      lambda: pipeline.encode(config, paths, boxes=boxes, reduction=reduction,
                     rotations=rotations(dataset, names),
                     apply_exif=dataset.apply_exif),
      expected)


def database_store(config, dataset):
  """Encodes (or reuses from workdir/stores) the dataset's database."""
  return _dataset_store(config, dataset, 'database',
                        datasets.database_paths(dataset), dataset.images)


def fitted_whitening(config, dataset, database):
  """Fits (or reuses from workdir/fits) whitening on pca.fit_on."""
  fit_store, fitted_on = database, dataset.name
  if config.pca.fit_on:
    other = open_dataset(config, config.pca.fit_on, config.pca.fit_root,
                         ground_truth=False)
    fit_store = _dataset_store(config, other, 'fitting',
                               datasets.database_paths(other), other.images,
                               database=database)
    fitted_on = other.name
  return _cached(
      os.path.join(config.workdir, 'fits', f'{dataset.name}-'
                   f'{pipeline.store_hash(config)}-'
                   f'{pipeline.fit_hash(config)}'),
      lambda: pipeline.fit(config, fit_store, fitted_on=fitted_on),
      {'config_hash': pipeline.store_hash(config),
       'fit_hash': pipeline.fit_hash(config),
       'reduction_hash': database.metadata['reduction_hash']},
      load=index.load_fit, save=index.save_fit)


def query_store(config, dataset, database):
  """Query descriptors: database rows for uncropped in-database queries,
  else the (cropped) query images encoded with the database's U^1.

  Returns:
    (store, positions): positions int (Q,) of each query's store row, -1 for
    an unreadable query.
  """
  crop = config.eval.crop_queries and dataset.boxes is not None
  if not crop and np.all(dataset.query_indices >= 0):
    where = {row: p for p, row in enumerate(database.metadata['rows'])}
    positions = np.array([where.get(q, -1) for q in dataset.query_indices])
    present = positions >= 0
    return (_take(database, positions[present]),
            np.where(present, np.cumsum(present) - 1, -1))
  paths = datasets.query_paths(dataset)
  store = _dataset_store(config, dataset,
                         f'queries-{"cropped" if crop else "full"}', paths,
                         dataset.queries, database=database,
                         boxes=dataset.boxes if crop else None)
  where = {row: p for p, row in enumerate(store.metadata['rows'])}
  return store, np.array([where.get(q, -1) for q in range(len(paths))])


def dataset_ranks(ranking, database, positions):
  """Store-row rankings -> int (Q, N') dataset indices, one row per query.

  An unreadable query (position -1) gets the database in index order.
  """
  rows = np.asarray(database.metadata['rows'], np.int64)
  ranks = np.tile(rows, (len(positions), 1))
  present = positions >= 0
  ranks[present] = rows[ranking.ranks[positions[present]]]
  return ranks
