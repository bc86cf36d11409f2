"""What the modes print and write: method names, tables, results files.

method_name     ('o2', True) -> 'O2_R', ('crow', False) -> 'CroW'
print_table     a right-aligned text table on stdout
new_results     <workdir>/results/<name>-<config hash>[-<n>] never in use
resolved        the config as plain JSON values (recorded with results)
per_query_ap    {query: AP} of one evaluation
print_fit       the line saying how the whitening was fitted, when it
                differs from the config (capped D, no whitening)
"""

import json
import os

import numpy as np

from regagg_jax.aggregation import method_table
from regagg_jax.evaluation import metrics
from regagg_jax.evaluation import precision
from regagg_jax.storage import records

METHOD_NAMES = {
  'o2': 'O2',
  'o1': 'O1',
  'spoc': 'SPoC',
  'mac': 'MAC',
  'crow': 'CroW',
  'rmac': 'R-MAC',
  'gem': 'GeM',
}
"""pooling.method -> the paper's name (regional methods get _R / _W)."""


def method_name(method, regional, qe=False):
  """The paper's name of a pooling: 'O2_R', 'O1_W', 'CroW', ..., '+QE'."""
  name = METHOD_NAMES[method]
  if method_table.POOLING[method].regional:
    name += '_R' if regional else '_W'
  return name + ('+QE' if qe else '')


def print_table(title, rows, columns):
  """Prints dicts `rows` as a table of `columns` (floats with 4 decimals)."""
  cells = [
    [f'{r[c]:.4f}' if isinstance(r[c], float) else str(r[c]) for c in columns]
    for r in rows
  ]
  widths = [
    max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)
  ]
  print(f'\n{title}')
  for row in [list(columns)] + cells:
    print(' | '.join(f'{v:>{w}}' for v, w in zip(row, widths)))


def resolved(config):
  """The config with references resolved, as plain JSON values."""
  return json.loads(json.dumps(config.copy_and_resolve_references().to_dict()))


def new_results(config, prefix=''):
  """A results path (no extension) named by the config, not yet used.

  <workdir>/results/<prefix><name>-<hash of the resolved config>, with
  -2, -3, ... appended when a file of that name exists: a rerun never
  overwrites an earlier result.
  """
  folder = os.path.join(config.workdir, 'results')
  os.makedirs(folder, exist_ok=True)
  base = os.path.join(
    folder, f'{prefix}{config.name}-{records.hash_config(resolved(config))[:8]}'
  )
  path, count = base, 1
  while any(os.path.exists(path + ext) for ext in ('.json', '.csv', '.png')):
    count += 1
    path = f'{base}-{count}'
  return path


def per_query_ap(dataset, ranks, scored, present):
  """{query name: AP} of the scored queries (NaN: no positive).

  AP against dataset.positives and junk as precision.compute_map computes it
  (Revisited: easy + hard positives, the Medium setting; Holidays: the
  query itself ignored, as its protocol drops it).

  Args:
    dataset: datasets.Dataset.
    ranks: int (Q, N') dataset indices per query, best first.
    scored: bool (Q,) encoded queries.
    present: int (N',) encoded database images.
  """
  kept = metrics.exclude_skipped(dataset, scored, present)
  junk = kept.junk
  if dataset.protocol == 'holidays':
    junk = tuple(
      np.append(j, q) for j, q in zip(junk, kept.query_indices, strict=True)
    )
  aps = precision.compute_map(
    np.asarray(ranks)[np.asarray(scored, bool)], kept.positives, junk
  ).aps
  return {name: float(ap) for name, ap in zip(kept.queries, aps)}


def print_fit(fitted):
  """Prints the whitening's note (capped D, no whitening) if it has one."""
  if fitted.metadata.get('note'):
    print(f'note: {fitted.metadata["note"]}')
