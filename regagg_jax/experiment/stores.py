"""A dataset's stores in the workdir: encoded once, resumably, one writer.

  dataset_store  images of a dataset -> their store, encoded or reused
  method_stores  its stores of several methods from one pass (the demo)
  one_writer     the store's lock held for this run's processes
  made_once      a file made by process 0, read by every process
  rotations      clockwise degrees of named images of a dataset

Stores live in <workdir>/stores/<dataset>-<role>-<store hash>[-raw: no
EXIF][-<U^1 hash>][-w<whitening hash>], written in shards and resumed
after a crash (storage.store_writer.build_store). A finished one is
reused when it matches the config; a store made with other settings is
refused. One run at a time reads or writes a store (storage.locks:
<workdir>/locks/<store name>.lock); another run of the same workdir waits
for it.

A store's shards record the fingerprints of their images
(storage.fingerprints): a shard holding an image replaced since is encoded
again, a store whose U^1 was fitted on such an image is encoded anew, and
the store carries the hash of its images' contents (fingerprints_hash),
which names the fits, indexes and graphs made of it.
"""

import contextlib
import os
import shutil

from absl import logging
import jax

from regagg_jax.aggregation import method_table
from regagg_jax.encoding import parallel
from regagg_jax.evaluation import datasets
from regagg_jax.experiment import fitting
from regagg_jax.experiment import pipeline
from regagg_jax.experiment import settings
from regagg_jax.storage import fingerprints
from regagg_jax.storage import locks
from regagg_jax.storage import records
from regagg_jax.storage import store_writer
from regagg_jax.storage import store_reader


def rotations(dataset, names):
  """Clockwise degrees of the named images of a dataset (0 if unlisted)."""
  return [dataset.rotations.get(n, 0) for n in names]


def made_once(path, load, make, save, name):
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


@contextlib.contextmanager
def one_writer(config, key):
  """Process 0 holds the lock of store `key` (storage.locks:
  <workdir>/locks/<key>.lock) while this run's processes, after a barrier,
  read or write it: another run of the same workdir waits (the processes
  of one run write disjoint shards)."""
  lock = os.path.join(config.workdir, 'locks', f'{key}.lock')
  first = jax.process_index() == 0
  with locks.hold(lock) if first else contextlib.nullcontext():
    parallel.barrier(f'locked {lock}')
    yield


def dataset_store(
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
  (store_writer.build_store): a killed run resumes where it stopped, a
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
    records.Store, its metadata with the fingerprints_hash of its images.
  """
  key = _store_key(config, dataset, role, reduction, whitening)
  path = os.path.join(config.workdir, 'stores', key)
  reading = dict(
    boxes=boxes,
    rotations=rotations(dataset, names),
    apply_exif=dataset.apply_exif,
  )
  with one_writer(config, key):
    if (
      reduction is None and method_table.POOLING[config.pooling.method].reduced
    ):
      reduction = _kept_reduction(
        config, dataset, key, path, paths, whitening, reading
      )
    header = _header(config, dataset, paths, reduction, whitening)
    store = _finished_store(path, header)
    if store is None:
      store = _encoded_store(
        config, key, path, paths, header, reduction, whitening, reading
      )
    return _with_inputs(store, path)


def _store_key(config, dataset, role, reduction, whitening):
  """The store's folder name: dataset, role, settings, U^1, whitening."""
  key = f'{dataset.name}-{role}-{settings.store_hash(config)}'
  if not dataset.apply_exif:
    key += '-raw'  # pixels as stored, EXIF orientation ignored
  if reduction is not None:
    key += f'-{records.hash_params(reduction)}'
  if whitening is not None:
    key += f'-w{records.hash_params(whitening)}'
  return key


def _header(config, dataset, paths, reduction, whitening):
  """The header the store at the key must match (settings.store_header)."""
  return settings.store_header(
    config,
    paths,
    reduction=reduction,
    whitening=whitening,
    apply_exif=dataset.apply_exif,
  )


def _kept_reduction(config, dataset, key, path, paths, whitening, reading):
  """U^1 of eq. (4), fitted once on pooling.reduction_images of the paths
  and kept in the store (a skeleton store of no shards), fitted again when
  images it was fitted on changed since."""
  fitted_rows = fitting.sample_rows(len(paths), config.pooling.reduction_images)
  return made_once(
    path,
    lambda p: _current_reduction(p, paths, fitted_rows),
    lambda: fitting.fit_reduction(config, paths, **reading),
    lambda p, r: store_writer.build_store(
      p,
      None,
      image_paths=paths,
      header=_header(config, dataset, paths, r, whitening),
      shard_size=config.features.shard_size,
      dtype=config.features.store_dtype,
      shards=[],
      reduction=r,
    ),
    f'U1 {key}',
  )


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
  return store_reader.load_reduction(path)


def _finished_store(path, header):
  """The finished store at path when it loads and matches header, else
  None (a damaged one is repaired by build_store)."""
  if not os.path.isfile(os.path.join(path, 'metadata.json')):
    return None
  try:
    store = store_reader.load_store(path)
  except ValueError as error:  # build_store re-encodes damaged shards
    logging.warning('repairing %s: %s', path, error)
    return None
  if not all(store.metadata.get(k) == v for k, v in header.items()):
    return None
  logging.info('reusing %s', path)
  return store


def _encoded_store(
  config, key, path, paths, header, reduction, whitening, reading
):
  """Encodes this process's missing shards of the store (process_shards),
  process 0 finalises it, then every process loads it."""
  num_shards = -(-len(paths) // config.features.shard_size)
  finished = store_writer.build_store(
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
    store_writer.finalize_store(path)
  parallel.barrier(f'finalised {key}')
  return store_reader.load_store(path)


def _with_inputs(store, path):
  """The store with the fingerprints_hash of its images (storage.
  fingerprints.digest) in its metadata: fits, indexes and graphs of it
  are keyed by it, so they are made again when its images change."""
  return store._replace(
    metadata=dict(store.metadata, fingerprints_hash=fingerprints.digest(path))
  )


def method_stores(config, dataset, methods):
  """Every method's database store from one VGG19 pass (--mode=demo), kept
  resumably in <workdir>/stores/<dataset>-methods[-raw]
  (pipeline.encode_methods with a directory), one run at a time (its
  storage.locks lock)."""
  key = f'{dataset.name}-methods' + ('' if dataset.apply_exif else '-raw')
  with one_writer(config, key):
    return pipeline.encode_methods(
      config,
      datasets.database_paths(dataset),
      methods,
      rotations=rotations(dataset, dataset.images),
      apply_exif=dataset.apply_exif,
      directory=os.path.join(config.workdir, 'stores', key),
    )
