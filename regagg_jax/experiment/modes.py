"""What run.py's --mode runs (MODES): demo, encode, fit, search, eval.

Each mode takes the config, gets its stores and fits from `workspace`, runs
`pipeline`'s stages, prints a summary and writes its results under
<workdir>/results.
"""

import json
import os

import jax
import numpy as np

from regagg_jax.evaluation import datasets
from regagg_jax.evaluation import metrics
from regagg_jax.evaluation import figures
from regagg_jax.storage import records
from regagg_jax.experiment import pipeline
from regagg_jax.experiment import retrieval
from regagg_jax.experiment import workspace


def _variant(config, method, regional):
  variant = config.copy_and_resolve_references()
  variant.pooling.method, variant.pooling.regional = method, regional
  return variant


def _print_table(title, results, columns):
  cells = [
    [f'{r[c]:.4f}' if isinstance(r[c], float) else str(r[c]) for c in columns]
    for r in results
  ]
  widths = [
    max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)
  ]
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
    dict with the scores (metrics.evaluate) and what produced them,
    also written to <workdir>/results/<name>.json.
  """
  dataset = workspace.load_dataset(config)
  database, fitted = workspace.prepare(config, dataset)
  queries, positions = workspace.query_store(config, dataset, database, fitted)
  ranking = retrieval.search(
    config,
    queries,
    database,
    fitted,
    workspace.search_index(config, dataset, database, fitted),
  )
  scores = metrics.evaluate(
    dataset, workspace.dataset_ranks(ranking, database, positions)
  )
  result = {
    'name': config.name,
    'dataset': dataset.name,
    'method': config.pooling.method,
    'regional': config.pooling.regional,
    'qe': config.search.qe,
    'index': config.search.index,
    'D': fitted.metadata['dim'],
    'fitted_on': fitted.metadata['fitted_on'],
    'num_database': len(database.image_paths),
    'num_queries': int(np.sum(positions >= 0)),
    **scores,
    'skipped': database.metadata['skipped']
    + [
      s
      for s in queries.metadata['skipped']
      if s not in database.metadata['skipped']
    ],
  }
  path = os.path.join(config.workdir, 'results', f'{config.name}.json')
  _write_json(path, result)
  _print_table(
    f'{config.name} ({path})',
    [result],
    ['method', 'regional', 'qe', 'D', *scores],
  )
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
  dataset = workspace.load_dataset(config, ground_truth=False)
  database, fitted = workspace.prepare(config, dataset)
  paths = _query_paths(config.search.queries)
  boxes = None
  if config.search.box:
    box = [float(v) for v in config.search.box.split(',')]
    if len(box) != 4:
      raise ValueError(
        f'search.box must be x1,y1,x2,y2, got {config.search.box!r}'
      )
    boxes = np.array([box] * len(paths))
  queries = workspace.encode_queries(
    config, paths, database, fitted, boxes=boxes
  )
  ranking = retrieval.search(
    config,
    queries,
    database,
    fitted,
    workspace.search_index(config, dataset, database, fitted),
  )
  path = os.path.join(config.workdir, 'results', f'search-{config.name}')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  records.write_results(
    path,
    ranking.scores,
    ranking.ranks,
    ranking.best,
    queries,
    database,
    top_k=config.search.top_k,
  )
  print(f'results: {path}.json {path}.csv')
  for q, query in enumerate(queries.image_paths):
    top = ranking.ranks[q, 0]
    print(
      f'{query}: best {database.image_paths[top]} '
      f'({ranking.scores[q, top]:.3f})'
    )


def run_encode(config):
  """--mode=encode: the database of config.eval -> a store in workdir
  (with pca.store_whitened, after fitting the whitening on pca.fit_on)."""
  store, _ = workspace.prepare(
    config, workspace.load_dataset(config, ground_truth=False), fit=False
  )
  if jax.process_index():
    return  # process 0 reports
  print(
    f'{len(store.image_paths)} images encoded as {store.valid.shape[1]} x '
    f'{store.descriptors.shape[2]} descriptors in '
    f'{os.path.join(config.workdir, "stores")}'
  )
  for image, reason in store.metadata['skipped']:
    print(f'skipped {image}: {reason}')


def run_fit(config):
  """--mode=fit: whitening of config.pca.fit_on (or the database)."""
  _, fitted = workspace.prepare(
    config, workspace.load_dataset(config, ground_truth=False)
  )
  print(
    f'PCA-whitening D = {fitted.metadata["dim"]} fitted on '
    f'{fitted.metadata["fitted_on"]} ({fitted.metadata["num_vectors"]} '
    f'vectors) in {os.path.join(config.workdir, "fits")}'
  )


DEMO_ROWS = {
  'O2_R (proposed)': ('o2', True),
  'O2_W': ('o2', False),
  'O1_R': ('o1', True),
  'O1_W': ('o1', False),
  'SPoC': ('spoc', False),
  'MAC': ('mac', False),
  'CroW': ('crow', False),
  'R-MAC': ('rmac', False),
  'GeM': ('gem', False),
}
"""Demo table row -> (pooling.method, pooling.regional); the first is drawn."""


def run_demo(config):
  """--mode=demo: every DEMO_ROWS method on config.eval's dataset (the
  bundled samples), one VGG19 pass; prints the table, writes
  <workdir>/results/demo.json and <workdir>/fig2.png."""
  dataset = workspace.load_dataset(config)
  methods = sorted({method for method, _ in DEMO_ROWS.values()})
  stores = pipeline.encode_methods(
    config,
    datasets.database_paths(dataset),
    methods,
    rotations=workspace.rotations(dataset, dataset.images),
    apply_exif=dataset.apply_exif,
  )
  results, drawn = [], None
  for label, (method, regional) in DEMO_ROWS.items():
    variant = _variant(config, method, regional)
    store = stores[method]
    fitted = pipeline.fit(variant, store, fitted_on=dataset.name)
    queries, positions = workspace.query_store(variant, dataset, store, fitted)
    ranking = retrieval.search(variant, queries, store, fitted)
    scores = metrics.evaluate(
      dataset, workspace.dataset_ranks(ranking, store, positions)
    )
    results.append({'method': label, 'D': fitted.metadata['dim'], **scores})
    drawn = drawn or (store, ranking, positions)
  path = os.path.join(config.workdir, 'results', f'{config.name}.json')
  _write_json(
    path,
    {
      'dataset': dataset.name,
      'results': results,
      'skipped': stores[methods[0]].metadata['skipped'],
    },
  )
  _print_table(
    f'{dataset.name}: {len(dataset.images)} images, every image '
    f'a query ({path})',
    results,
    list(results[0]),
  )
  figure = os.path.join(config.workdir, 'fig2.png')
  figures.draw_results(
    figure,
    dataset,
    *drawn,
    max_size=config.features.max_size,
    num_queries=config.eval.figure_queries,
    num_results=config.eval.figure_results,
  )
  print(f'\nFig. 2 ({next(iter(DEMO_ROWS))}): {figure}')
  return results


MODES = {
  'demo': run_demo,
  'encode': run_encode,
  'fit': run_fit,
  'search': run_search,
  'eval': evaluate,
}
"""run.py --mode -> function(config)."""
