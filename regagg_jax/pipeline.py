"""Encode, fit, search and evaluate: the only reader of a config.

  encode  images -> index.Store: region descriptors (N, M, D_store) + validity
  fit     Store -> index.Fit: PCA-whitening U^2, s (eq. 6)
  search  queries x Store -> scores (eq. 7, eq. 8 with QE), ranks, best region
  MODES   what run.py's --mode runs: demo, encode, fit, search, eval

`encode` reads the features, regions and pooling sections and hands them to
`encoder` (images -> region descriptors, two-pass for 'o2'); `figures` draws
the demo's Fig. 2. A store holds unwhitened descriptors (D_store =
K'(K'+1)/2 for 'o2', K otherwise) and U^1, so one store serves every D, QE
and R/W setting: whitening is fitted on a store by `fit` and applied at
search time. R/W (pooling.regional) only selects regions: W uses R_M alone.

Stores and fits carry the hash of the config sections that made them
(`store_hash`, `fit_hash`) and mixing them with another config is refused.
Images that cannot be read are skipped, logged and listed in the store
metadata ('skipped'); store rows keep input order ('rows' maps them back).
Oxford / Paris images are read without their EXIF orientation, which their
query boxes ignore (datasets.Dataset.apply_exif); stores record it.
The eval / search / fit modes keep stores and fits in <workdir>/stores and
<workdir>/fits, keyed by those hashes, and reuse them.

PCA-whitening fitted on fewer vectors than a few times D amplifies noise
and ruins mAP: `fit` caps D at (fitting vectors) / pca.min_vectors_per_dim,
pca.fit_on learns it on another set, and the demo (configs/demo.py) uses a
small D = 16 for every method.
"""

import json
import os
from typing import NamedTuple

from absl import logging
import jax
import numpy as np

from regagg_jax import datasets
from regagg_jax import encoder
from regagg_jax import evaluation
from regagg_jax import figures
from regagg_jax import index
from regagg_jax import pca
from regagg_jax import similarity
from regagg_jax import vgg19

WEIGHTS = {
    'imagenet': lambda features: vgg19.load_params(),
    'random': lambda features: vgg19.init_params(
        jax.random.PRNGKey(features.seed), widths=tuple(features.widths)),
}
"""features.weights -> VGG19 variables."""

QUERY_REGIONS = {'all': False, 'whole': True}
"""search.query_regions -> whether queries use R_M (the whole image) only."""


def store_hash(config, method=None):
  """Hash of what a store depends on: features, regions, pooling (not R/W).

  Args:
    config: ConfigDict.
    method: pooling method to hash instead of config.pooling.method.

  Returns:
    16 hex digits (index.hash_config).
  """
  method = method or config.pooling.method
  features = {k: v for k, v in config.features.to_dict().items()
              if k not in ('batch_size', 'cache_mib')}
  pooled = dict(config.pooling.to_dict(), method=method)
  pooled.pop('regional')
  sections = {'features': features, 'pooling': pooled}
  if encoder.POOLING[method].regional:
    sections['regions'] = config.regions.to_dict()
  return index.hash_config(sections)


def fit_hash(config):
  """Hash of what a fit depends on besides its store: pca, R/W."""
  return index.hash_config({'pca': config.pca.to_dict(),
                            'regional': config.pooling.regional})


def encode_methods(config, image_paths, methods, *, boxes=None,
                   rotations=None, reduction=None, apply_exif=True):
  """Encodes images once for several pooling methods (one VGG19 pass).

  Reads the features, regions and pooling sections for
  `encoder.encode_methods` and records the config and its `store_hash` in
  each store's metadata.

  Args:
    config: ConfigDict (features, regions, pooling sections).
    image_paths: N image files.
    methods: encoder.POOLING keys.
    boxes: float (N, 4) x1 y1 x2 y2 crops at full resolution, or None.
    rotations: N clockwise degrees (multiples of 90), or None.
    reduction: U^1 (eq. 4) for 'o2' (queries: the database's); None fits
      it on these images.
    apply_exif: apply JPEG EXIF orientations (datasets.Dataset.apply_exif).

  Returns:
    {method: index.Store} over the readable images, in input order.

  Raises:
    ValueError: an unknown method.
  """
  features = config.features
  stores = encoder.encode_methods(
      WEIGHTS[features.weights](features), image_paths, methods,
      region_options={k: config.regions[k] for k in (
          'backend', 'n_max', 'n_min', 'num_clusters', 'min_cells')},
      pooling_options={'gem_power': float(config.pooling.gem_power),
                       'offdiag_scale': float(config.pooling.offdiag_scale),
                       'rmac_levels': int(config.pooling.rmac_levels)},
      k_prime=config.pooling.k_prime, max_size=features.max_size,
      batch_size=features.batch_size, dtype=features.dtype,
      cache_mib=features.cache_mib, boxes=boxes, rotations=rotations,
      reduction=reduction, apply_exif=apply_exif)
  return {method: store._replace(metadata=dict(
      store.metadata, config_hash=store_hash(config, method),
      config=json.loads(json.dumps(dict(config.to_dict(), pooling=dict(
          config.pooling.to_dict(), method=method))))))
          for method, store in stores.items()}


def encode(config, image_paths, *, boxes=None, rotations=None,
           reduction=None, apply_exif=True):
  """Encodes images with config.pooling.method (see `encode_methods`).

  Returns:
    index.Store: float32 (N', M, D_store) descriptors of the N' readable
    images (M = 2^L, or 1 for global baselines), bool (N', M) validity,
    masks, U^1 and metadata (config, hashes, rows, sizes, skipped).
  """
  method = config.pooling.method
  return encode_methods(config, image_paths, (method,), boxes=boxes,
                        rotations=rotations, reduction=reduction,
                        apply_exif=apply_exif)[method]


def _use_regions(valid, *, whole):
  """bool (N, M) validity restricted to R_M (the last slot) when `whole`."""
  if not whole:
    return valid
  return valid & (np.arange(valid.shape[1]) == valid.shape[1] - 1)


def _differences(stored, current, prefix=''):
  """'section.key: stored -> current' for every differing config value."""
  keys = sorted(set(stored) | set(current))
  lines = []
  for key in keys:
    old, new = stored.get(key), current.get(key)
    if isinstance(old, dict) and isinstance(new, dict):
      lines += _differences(old, new, f'{prefix}{key}.')
    elif old != new:
      lines.append(f'{prefix}{key}: {old!r} -> {new!r}')
  return lines


def check_store(config, store, role='database'):
  """Refuses a store encoded with another config.

  Args:
    config: ConfigDict.
    store: index.Store.
    role: what the store is, for the message.

  Raises:
    ValueError: naming the differing config fields.
  """
  expected = store_hash(config)
  if store.metadata['config_hash'] != expected:
    current = json.loads(json.dumps(config.to_dict()))
    changes = [c for c in _differences(store.metadata['config'], current)
               if c.split('.')[0] in ('features', 'regions', 'pooling')]
    raise ValueError(
        f'the {role} store was encoded with config {store.metadata["config_hash"]}'
        f', this config is {expected} ({"; ".join(changes[:8]) or "?"}); '
        'encode it again with this config')


def check_fit(config, store, fit):
  """Refuses fitted whitening that does not belong to a store and config.

  Args:
    config: ConfigDict.
    store: index.Store the whitening is applied to.
    fit: index.Fit.

  Raises:
    ValueError: fitted on another config's descriptors, with another U^1,
      with other pca settings, or the store is from another config.
  """
  where = f'(fitted on {fit.metadata.get("fitted_on", "?")})'
  if fit.metadata['config_hash'] != store.metadata['config_hash']:
    raise ValueError(
        f'the PCA-whitening {where} was fitted on descriptors of config '
        f'{fit.metadata["config_hash"]} but the store holds config '
        f'{store.metadata["config_hash"]}; run --mode=fit with this config')
  if fit.metadata['reduction_hash'] != store.metadata['reduction_hash']:
    raise ValueError(f'the PCA-whitening {where} was fitted with another U^1 '
                     '(eq. 4) than the store was encoded with; fit it again')
  check_store(config, store)
  if fit.metadata['fit_hash'] != fit_hash(config):
    raise ValueError(f'the PCA-whitening {where} was fitted with other pca '
                     'settings (dim, whiten, fit_on) or R/W variant than this '
                     'config; fit it again')


def fit(config, store, *, fitted_on=''):
  """Fits PCA-whitening (eq. 6) on the region descriptors of a store.

  Only R_M is used for the W variant. D = pca.dim, capped at the descriptor
  dimension and at (valid vectors) / pca.min_vectors_per_dim (logged).

  Args:
    config: ConfigDict.
    store: index.Store encoded with `config`.
    fitted_on: what the store is (recorded), e.g. a dataset name.

  Returns:
    index.Fit with the store's U^1 and U^2, 1/s.
  """
  check_store(config, store, 'fitting')
  mask = _use_regions(store.valid, whole=not config.pooling.regional)
  num_vectors = int(mask.sum())
  dim = min(config.pca.dim, store.descriptors.shape[-1],
            max(1, num_vectors // config.pca.min_vectors_per_dim))
  if dim < config.pca.dim:
    logging.warning('PCA-whitening D capped from %d to %d: %d fitting vectors '
                    'of dimension %d', config.pca.dim, dim, num_vectors,
                    store.descriptors.shape[-1])
  whitening = pca.fit(store.descriptors.reshape(-1, store.descriptors.shape[-1]),
                      dim, whiten=config.pca.whiten, mask=mask.reshape(-1))
  return index.Fit(store.reduction, whitening, {
      'config_hash': store.metadata['config_hash'],
      'reduction_hash': store.metadata['reduction_hash'],
      'fit_hash': fit_hash(config), 'fitted_on': fitted_on,
      'num_images': len(store.image_paths), 'num_vectors': num_vectors,
      'dim': dim})


class Ranking(NamedTuple):
  """Search results.

  Attributes:
    scores: float32 (Q, N) eq. (7), or eq. (8) with QE.
    ranks: int64 (Q, N) database rows, best first.
    best: int32 (Q, N) best-matched database region of eq. (7).
  """
  scores: np.ndarray
  ranks: np.ndarray
  best: np.ndarray


def search(config, queries, database, fitted):
  """Ranks a database store for every image of a query store.

  Args:
    config: ConfigDict (pooling.regional, search section).
    queries: index.Store of the queries, encoded with the database's U^1.
    database: index.Store.
    fitted: index.Fit of the database's config.

  Returns:
    Ranking.

  Raises:
    ValueError: stores or fit from different configs.
  """
  check_fit(config, database, fitted)
  check_store(config, queries, 'query')
  if queries.metadata['reduction_hash'] != database.metadata['reduction_hash']:
    raise ValueError('the queries were encoded with another U^1 (eq. 4) than '
                     'the database; encode them with reduction=database.reduction')
  whole = not config.pooling.regional
  query_valid = _use_regions(queries.valid, whole=whole or QUERY_REGIONS[
      config.search.query_regions])
  database_valid = _use_regions(database.valid, whole=whole)
  query = pca.apply(fitted.whitening, jax.numpy.asarray(queries.descriptors),
                    jax.numpy.asarray(query_valid))  # eq. (6)
  target = pca.apply(fitted.whitening, jax.numpy.asarray(database.descriptors),
                     jax.numpy.asarray(database_valid))
  scores, best = similarity.image_similarity(  # eq. (7)
      query, query_valid, target, database_valid,
      chunk_size=config.search.chunk_size)
  if config.search.qe:
    scores = similarity.query_expansion(  # eq. (8)
        query, target, database_valid, scores, best,
        n_qe=min(config.search.n_qe, len(database.image_paths)),
        include_query=config.search.qe_include_query,
        query_valid=jax.numpy.asarray(query_valid),
        chunk_size=config.search.chunk_size)
  scores = np.asarray(scores)
  return Ranking(scores, evaluation.ranks_from_scores(scores), np.asarray(best))


def _take(store, positions):
  """The rows `positions` of a store, as a store."""
  metadata = dict(store.metadata, rows=[store.metadata['rows'][p] for p in positions],
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


def _rotations(dataset, names):
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
  key = f'{dataset.name}-{role}-{store_hash(config)}'
  expected = {'config_hash': store_hash(config),
              'apply_exif': dataset.apply_exif,
              'inputs_hash': index.hash_config([str(p) for p in paths])}
  reduction = None
  if database is not None:
    key += f'-{database.metadata["reduction_hash"]}'
    expected['reduction_hash'] = database.metadata['reduction_hash']
    reduction = database.reduction
  return _cached(
      os.path.join(config.workdir, 'stores', key),
      lambda: encode(config, paths, boxes=boxes, reduction=reduction,
                     rotations=_rotations(dataset, names),
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
                   f'{store_hash(config)}-{fit_hash(config)}'),
      lambda: fit(config, fit_store, fitted_on=fitted_on),
      {'config_hash': store_hash(config), 'fit_hash': fit_hash(config),
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


def _variant(config, method, regional):
  variant = config.copy_and_resolve_references()
  variant.pooling.method, variant.pooling.regional = method, regional
  return variant


def _print_table(title, results, columns):
  cells = [[f'{r[c]:.4f}' if isinstance(r[c], float) else str(r[c])
            for c in columns] for r in results]
  widths = [max(len(c), *(len(row[i]) for row in cells))
            for i, c in enumerate(columns)]
  print(f'\n{title}')
  for row in [list(columns)] + cells:
    print(' | '.join(f'{v:>{w}}' for v, w in zip(row, widths)))


def _write_json(path, value):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as stream:
    json.dump(value, stream, indent=1)


def evaluate(config):
  """Runs a benchmark (config.eval) end to end; prints and writes the mAP.

  Returns:
    dict with the scores (evaluation.evaluate) and what produced them,
    also written to <workdir>/results/<name>.json.
  """
  dataset = load_dataset(config)
  database = database_store(config, dataset)
  fitted = fitted_whitening(config, dataset, database)
  queries, positions = query_store(config, dataset, database)
  ranking = search(config, queries, database, fitted)
  scores = evaluation.evaluate(dataset, dataset_ranks(ranking, database,
                                                      positions))
  result = {'name': config.name, 'dataset': dataset.name,
            'method': config.pooling.method,
            'regional': config.pooling.regional, 'qe': config.search.qe,
            'D': fitted.metadata['dim'], 'fitted_on': fitted.metadata['fitted_on'],
            'num_database': len(database.image_paths),
            'num_queries': int(np.sum(positions >= 0)), **scores,
            'skipped': database.metadata['skipped'] + [
                s for s in queries.metadata['skipped']
                if s not in database.metadata['skipped']]}
  path = os.path.join(config.workdir, 'results', f'{config.name}.json')
  _write_json(path, result)
  _print_table(f'{config.name} ({path})', [result],
               ['method', 'regional', 'qe', 'D', *scores])
  for image, reason in result['skipped']:
    print(f'skipped {image}: {reason}')
  return result


def _query_paths(spec):
  """search.queries: an image file, a folder, or a .txt list of files."""
  if os.path.isdir(spec):
    return [os.path.join(spec, n) for n in datasets.list_images(spec)]
  if spec.endswith('.txt'):
    with open(spec) as stream:
      return [line.strip() for line in stream if line.strip()]
  return [spec]


def run_search(config):
  """--mode=search: search.queries (optional search.box) against the
  database of config.eval; writes <workdir>/results/search-<name>.json/csv."""
  if not config.search.queries:
    raise ValueError('set --config.search.queries to an image, folder or .txt')
  dataset = load_dataset(config, ground_truth=False)
  database = database_store(config, dataset)
  fitted = fitted_whitening(config, dataset, database)
  paths = _query_paths(config.search.queries)
  boxes = None
  if config.search.box:
    box = [float(v) for v in config.search.box.split(',')]
    if len(box) != 4:
      raise ValueError(f'search.box must be x1,y1,x2,y2, got {config.search.box!r}')
    boxes = np.array([box] * len(paths))
  queries = encode(config, paths, boxes=boxes, reduction=database.reduction)
  ranking = search(config, queries, database, fitted)
  path = os.path.join(config.workdir, 'results', f'search-{config.name}')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  index.write_results(path, ranking.scores, ranking.ranks, ranking.best,
                      queries, database, top_k=config.search.top_k)
  print(f'results: {path}.json {path}.csv')
  for q, query in enumerate(queries.image_paths):
    top = ranking.ranks[q, 0]
    print(f'{query}: best {database.image_paths[top]} '
          f'({ranking.scores[q, top]:.3f})')


def run_encode(config):
  """--mode=encode: the database of config.eval -> a store in workdir."""
  store = database_store(config, load_dataset(config, ground_truth=False))
  print(f'{len(store.image_paths)} images encoded as {store.valid.shape[1]} x '
        f'{store.descriptors.shape[2]} descriptors in '
        f'{os.path.join(config.workdir, "stores")}')
  for image, reason in store.metadata['skipped']:
    print(f'skipped {image}: {reason}')


def run_fit(config):
  """--mode=fit: whitening of config.pca.fit_on (or the database)."""
  dataset = load_dataset(config, ground_truth=False)
  fitted = fitted_whitening(config, dataset, database_store(config, dataset))
  print(f'PCA-whitening D = {fitted.metadata["dim"]} fitted on '
        f'{fitted.metadata["fitted_on"]} ({fitted.metadata["num_vectors"]} '
        f'vectors) in {os.path.join(config.workdir, "fits")}')


DEMO_ROWS = {
    'O2_R (proposed)': ('o2', True), 'O2_W': ('o2', False),
    'O1_R': ('o1', True), 'O1_W': ('o1', False), 'SPoC': ('spoc', False),
    'MAC': ('mac', False), 'CroW': ('crow', False), 'R-MAC': ('rmac', False),
    'GeM': ('gem', False)}
"""Demo table row -> (pooling.method, pooling.regional); the first is drawn."""

def run_demo(config):
  """--mode=demo: every DEMO_ROWS method on config.eval's dataset (the
  bundled samples), one VGG19 pass; prints the table, writes
  <workdir>/results/demo.json and <workdir>/fig2.png."""
  dataset = load_dataset(config)
  methods = sorted({method for method, _ in DEMO_ROWS.values()})
  stores = encode_methods(config, datasets.database_paths(dataset), methods,
                          rotations=_rotations(dataset, dataset.images),
                          apply_exif=dataset.apply_exif)
  results, drawn = [], None
  for label, (method, regional) in DEMO_ROWS.items():
    variant = _variant(config, method, regional)
    store = stores[method]
    fitted = fit(variant, store, fitted_on=dataset.name)
    queries, positions = query_store(variant, dataset, store)
    ranking = search(variant, queries, store, fitted)
    scores = evaluation.evaluate(dataset, dataset_ranks(ranking, store,
                                                        positions))
    results.append({'method': label, 'D': fitted.metadata['dim'], **scores})
    drawn = drawn or (store, ranking, positions)
  path = os.path.join(config.workdir, 'results', f'{config.name}.json')
  _write_json(path, {'dataset': dataset.name, 'results': results,
                     'skipped': stores[methods[0]].metadata['skipped']})
  _print_table(f'{dataset.name}: {len(dataset.images)} images, every image '
               f'a query ({path})', results, list(results[0]))
  figure = os.path.join(config.workdir, 'fig2.png')
  figures.draw_results(figure, dataset, *drawn, max_size=config.features.max_size,
               num_queries=config.eval.figure_queries,
               num_results=config.eval.figure_results)
  print(f'\nFig. 2 ({next(iter(DEMO_ROWS))}): {figure}')
  return results


MODES = {'demo': run_demo, 'encode': run_encode, 'fit': run_fit,
         'search': run_search, 'eval': evaluate}
"""run.py --mode -> function(config)."""
