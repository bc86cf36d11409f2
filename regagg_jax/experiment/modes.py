"""What run.py's --mode runs (MODES): config, demo, encode, fit, search,
eval.

Each mode takes the config, gets its stores and fits from `workspace` and
`stores` and its rankings from `searches`, runs `pipeline`'s and
`fitting`'s stages, prints a summary and writes its results under
<workdir>/results, in files named by the config that are never overwritten
(`reporting`).
"""

import os

import jax
import numpy as np

from regagg_jax.evaluation import datasets
from regagg_jax.evaluation import folders
from regagg_jax.evaluation import metrics
from regagg_jax.evaluation import figures
from regagg_jax.storage import atomic
from regagg_jax.storage import records
from regagg_jax.experiment import fitting
from regagg_jax.experiment import reporting
from regagg_jax.experiment import retrieval
from regagg_jax.experiment import searches
from regagg_jax.experiment import stores
from regagg_jax.experiment import workspace


def _variant(config, method, regional, rerank='none'):
  variant = config.copy_and_resolve_references()
  variant.pooling.method, variant.pooling.regional = method, regional
  variant.search.rerank = rerank
  return variant


def evaluate(config):
  """Runs a benchmark (config.eval) end to end; prints and writes the mAP.

  Returns:
    dict with the scores (metrics.evaluate), the AP of every query, the
    resolved config and what produced them, also written to
    <workdir>/results/<name>-<config hash>.json.
  """
  dataset = workspace.load_dataset(config)
  database, fitted = workspace.prepare(config, dataset)
  queries, positions = workspace.query_store(config, dataset, database, fitted)
  ranking = searches.rank(config, dataset, queries, database, fitted)
  ranks = searches.dataset_ranks(ranking, database, positions)
  rerank = retrieval.rerank_name(config.search)
  scores = metrics.evaluate(  # unreadable images take no part
    dataset, ranks, scored=positions >= 0, present=database.metadata['rows']
  )
  reasons = dict(
    map(tuple, database.metadata['skipped'] + queries.metadata['skipped'])
  )
  query_files = [str(p) for p in datasets.query_paths(dataset)]
  result = {
    'name': config.name,
    'dataset': dataset.name,
    'method': reporting.method_name(
      config.pooling.method, config.pooling.regional, rerank == 'qe'
    )
    + _RERANK_LABELS.get(rerank, ''),
    'pooling': config.pooling.method,
    'regional': config.pooling.regional,
    'qe': config.search.qe,
    'rerank': rerank,
    'index': config.search.index,
    'D': fitted.metadata['dim'],
    'whiten': fitted.metadata.get('whiten', config.pca.whiten),
    'fitted_on': fitted.metadata['fitted_on'],
    'num_database': len(database.image_paths),
    'num_queries': int(np.sum(positions >= 0)),
    'skipped_queries': [
      [name, reasons.get(path, 'not encoded')]
      for name, path, position in zip(dataset.queries, query_files, positions)
      if position < 0
    ],
    **scores,
    'skipped': database.metadata['skipped']
    + [
      s
      for s in queries.metadata['skipped']
      if s not in database.metadata['skipped']
    ],
    'per_query_ap': reporting.per_query_ap(
      dataset, ranks, positions >= 0, database.metadata['rows']
    ),
    'config': reporting.resolved(config),
  }
  path = reporting.new_results(config) + '.json'
  atomic.write_json(path, result)
  reporting.print_table(
    f'{config.name} ({path})', [result], ['method', 'D', 'whiten', *scores]
  )
  reporting.print_fit(fitted)
  for image, reason in result['skipped']:
    print(f'skipped {image}: {reason}')
  return result


def _query_paths(spec):
  """search.queries: an image file, a folder, or a .txt list of files."""
  if os.path.isdir(spec):
    return [os.path.join(spec, n) for n in folders.list_images(spec)]
  if spec.endswith('.txt'):
    with open(spec) as stream:
      return [line.strip() for line in stream if line.strip()]
  return [spec]


def run_search(config):
  """--mode=search: search.queries (optional search.box) against the
  database of config.eval; writes <workdir>/results/search-<name>-<config
  hash>.json/csv (with the resolved config) and .png (figures.draw_search:
  each query beside its eval.figure_results best results)."""
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
  ranking = searches.rank(config, dataset, queries, database, fitted)
  path = reporting.new_results(config, 'search-')
  records.write_results(
    path,
    ranking.scores,
    ranking.ranks,
    ranking.best,
    queries,
    database,
    top_k=config.search.top_k,
    header={'config': reporting.resolved(config)},
  )
  shown = min(config.eval.figure_results, len(database.image_paths))
  figures.draw_search(
    path + '.png',
    queries,
    database,
    ranking,
    retrieval.matched_query_regions(
      config, queries, database, fitted, ranking, shown
    ),
    max_size=config.features.max_size,
    num_results=shown,
    boxes=None if boxes is None else boxes[queries.metadata['rows']],
  )
  print(f'results: {path}.json {path}.csv {path}.png')
  reporting.print_fit(fitted)
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
  kind = 'PCA-whitening' if fitted.metadata.get('whiten', True) else 'PCA'
  print(
    f'{kind} D = {fitted.metadata["dim"]} fitted on '
    f'{fitted.metadata["fitted_on"]} ({fitted.metadata["num_vectors"]} '
    f'vectors) in {os.path.join(config.workdir, "fits")}'
  )
  reporting.print_fit(fitted)


DEMO_ROWS = (
  ('o2', True, 'none'),
  ('o2', False, 'none'),
  ('o1', True, 'none'),
  ('o1', False, 'none'),
  ('spoc', False, 'none'),
  ('mac', False, 'none'),
  ('crow', False, 'none'),
  ('rmac', False, 'none'),
  ('gem', False, 'none'),
  ('o2', True, 'alpha_qe'),
  ('o2', True, 'diffusion'),
)
"""Demo table rows (pooling.method, pooling.regional, search.rerank); the
first, the proposed method, is drawn. The 56 samples cannot rank the
re-rankings (every method is near mAP 1); their rows show that they run."""

_RERANK_LABELS = {
  'none': '',
  'alpha_qe': ' + α-QE',
  'diffusion': ' + diffusion',
}


def demo_label(method, regional, rerank='none'):
  """The demo table's row name: reporting.method_name, '(proposed)' for
  the first row, ' + α-QE' / ' + diffusion' for re-ranked rows."""
  name = reporting.method_name(method, regional) + _RERANK_LABELS[rerank]
  first = (method, regional, rerank) == DEMO_ROWS[0]
  return f'{name} (proposed)' if first else name


def run_demo(config):
  """--mode=demo: every DEMO_ROWS method on config.eval's dataset (the
  bundled samples), one VGG19 pass into resumable stores
  (stores.method_stores); prints the table, writes
  <workdir>/results/demo-<config hash>.json and <workdir>/fig2.png."""
  dataset = workspace.load_dataset(config)
  methods = sorted({method for method, *_ in DEMO_ROWS})
  by_method = stores.method_stores(config, dataset, methods)  # resumable
  results, drawn, notes = [], None, {}
  for method, regional, rerank in DEMO_ROWS:
    variant = _variant(config, method, regional, rerank)
    store = by_method[method]
    fitted = fitting.fit(variant, store, fitted_on=dataset.name)
    queries, positions = workspace.query_store(variant, dataset, store, fitted)
    ranking = searches.rank(variant, dataset, queries, store, fitted)
    scores = metrics.evaluate(
      dataset, searches.dataset_ranks(ranking, store, positions)
    )
    results.append(
      {
        'method': demo_label(method, regional, rerank),
        'D': fitted.metadata['dim'],
        'whiten': fitted.metadata['whiten'],
        **scores,
      }
    )
    notes.setdefault(fitted.metadata['note'], []).append(results[-1]['method'])
    drawn = drawn or (variant, queries, store, fitted, ranking, positions)
  path = reporting.new_results(config) + '.json'
  atomic.write_json(
    path,
    {
      'dataset': dataset.name,
      'results': results,
      'skipped': by_method[methods[0]].metadata['skipped'],
      'config': reporting.resolved(config),
    },
  )
  reporting.print_table(
    f'{dataset.name}: {len(dataset.images)} images, every image '
    f'a query ({path})',
    results,
    list(results[0]),
  )
  for note, labels in notes.items():
    if note:
      print(f'note ({", ".join(labels)}): {note}')
  figure = os.path.join(config.workdir, 'fig2.png')
  variant, queries, store, fitted, ranking, positions = drawn
  figures.draw_results(
    figure,
    dataset,
    store,
    ranking,
    positions,
    max_size=config.features.max_size,
    num_queries=config.eval.figure_queries,
    num_results=config.eval.figure_results,
    boxes=workspace.query_boxes(variant, dataset),  # as queries were encoded
    queries=queries,
    query_regions=retrieval.matched_query_regions(
      variant, queries, store, fitted, ranking, config.eval.figure_results + 1
    ),
  )
  print(f'\nFig. 2 ({demo_label(*DEMO_ROWS[0])}): {figure}')
  return results


def run_config(config):
  """--mode=config: prints the resolved config (every field, overrides
  applied) and runs nothing."""
  print(config.copy_and_resolve_references())


MODES = {
  'config': run_config,
  'demo': run_demo,
  'encode': run_encode,
  'fit': run_fit,
  'search': run_search,
  'eval': evaluate,
}
"""run.py --mode -> function(config)."""
