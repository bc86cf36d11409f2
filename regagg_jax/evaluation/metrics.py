"""The benchmarks' protocols: which mAP each dataset reports (host, numpy).

  evaluate               a datasets.Dataset's protocol -> its scores
  exclude_skipped        ground truth over the readable images only
  compute_revisited_map  Revisited Oxford/Paris, Easy / Medium / Hard
  holidays_map           INRIA Holidays: the query left out of its ranking
  ukbench_score / _map   UKBench N-S score (top 4) and mAP
  revisited_ground_truth positives and junk of one Revisited setting

All are built on `precision` (the trapezoidal AP of compute_ap.cpp, mAP and
revisitop's mP@k): `ranks` is int (Q, R) database indices in rank order
(best first), per-query ground truth Q int arrays of database indices.
"""

from typing import Sequence

import numpy as np

from regagg_jax.evaluation import precision

REVISITED_SETTINGS = ('easy', 'medium', 'hard')
UKBENCH_TOP_K = 4  # N-S score: relevant images counted among the top 4.


def revisited_ground_truth(
  easy: Sequence, hard: Sequence, junk: Sequence, *, setting: str
) -> tuple[list, list]:
  """Positives and junk of one Revisited Oxford/Paris setting.

  Easy: positives = easy, junk = junk + hard. Medium: positives = easy + hard,
  junk = junk. Hard: positives = hard, junk = junk + easy.

  Args:
    easy, hard, junk: Q int arrays each, the labels of the pkl file.
    setting: 'easy', 'medium' or 'hard'.

  Returns:
    (positives, junk): two lists of Q int64 arrays.
  """
  if setting not in REVISITED_SETTINGS:
    raise ValueError(
      f'setting must be one of {REVISITED_SETTINGS}, got {setting!r}'
    )
  cat = lambda *parts: np.concatenate([np.asarray(p, np.int64) for p in parts])
  if setting == 'easy':
    return [cat(e) for e in easy], [cat(j, h) for j, h in zip(junk, hard)]
  if setting == 'medium':
    return [cat(e, h) for e, h in zip(easy, hard)], [cat(j) for j in junk]
  return [cat(h) for h in hard], [cat(j, e) for j, e in zip(junk, easy)]


def compute_revisited_map(
  ranks,
  easy: Sequence,
  hard: Sequence,
  junk: Sequence,
  *,
  kappas: Sequence[int] = precision.KAPPAS,
) -> dict[str, precision.Scores]:
  """Revisited Oxford/Paris evaluation in the Easy, Medium and Hard settings.

  Args:
    ranks: int (Q, R) database indices per query, best first (the queries are
      not in the database in this protocol).
    easy, hard, junk: Q int arrays each, the labels of the pkl file.
    kappas: cut-offs k of mP@k.

  Returns:
    {'easy': precision.Scores, 'medium': precision.Scores, 'hard': precision.Scores}.
  """
  results = {}
  for setting in REVISITED_SETTINGS:
    positives, ignored = revisited_ground_truth(
      easy, hard, junk, setting=setting
    )
    results[setting] = precision.compute_map(
      ranks, positives, ignored, kappas=kappas
    )
  return results


def holidays_map(ranks, positives: Sequence, query_indices) -> float:
  """INRIA Holidays mAP: the trapezoidal AP with each query dropped from its ranking.

  Equivalent to the official `holidays_map.py`, which shifts the ranks after
  the query itself by one.

  Args:
    ranks: int (Q, R) database indices per query, best first.
    positives: Q int arrays: the other images of the query's group.
    query_indices: int (Q,) database index of each query image.

  Returns:
    The mAP over the queries.
  """
  query_indices = np.asarray(query_indices, np.int64)
  junk = [query_indices[i : i + 1] for i in range(query_indices.size)]
  return precision.mean_average_precision(ranks, positives, junk)


def ukbench_score(
  ranks, query_groups, database_groups, *, top_k: int = UKBENCH_TOP_K
) -> float:
  """UKBench N-S score: mean number of same-group images in the top 4.

  The query itself is in the database and counts, so the maximum is 4.0.

  Args:
    ranks: int (Q, R) database indices per query, best first, R >= top_k.
    query_groups: int (Q,) group of each query.
    database_groups: int (N,) group of each database image.
    top_k: number of top results counted.

  Returns:
    The mean count over the queries, in [0, top_k].
  """
  ranks = precision.check_ranks(ranks)
  if ranks.shape[1] < top_k:
    raise ValueError(
      f'ranks must hold at least top_k={top_k} results, got {ranks.shape[1]}'
    )
  query_groups = np.asarray(query_groups)
  if query_groups.shape != (ranks.shape[0],):
    raise ValueError(
      f'query_groups must be ({ranks.shape[0]},), got {query_groups.shape}'
    )
  top_groups = np.asarray(database_groups)[ranks[:, :top_k]]
  return float(np.mean(np.sum(top_groups == query_groups[:, None], axis=1)))


def ukbench_map(ranks, query_groups, database_groups) -> float:
  """UKBench mAP: positives are the 4 group members, the query itself included.

  Args: as `ukbench_score`.
  """
  same = (
    np.asarray(query_groups)[:, None] == np.asarray(database_groups)[None, :]
  )
  return precision.mean_average_precision(
    ranks, [np.flatnonzero(row) for row in same]
  )


def exclude_skipped(dataset, scored, present):
  """The ground truth of the scored queries over the present images only.

  Skipped (unreadable) images take no part in any metric: an unscored
  query is dropped, and an absent database image is neither positive nor
  junk (nor in a UKBench group).

  Args:
    dataset: a `datasets.Dataset`.
    scored: bool (Q,) queries that were encoded.
    present: int (N',) database indices that were encoded.

  Returns:
    The dataset with Q' = sum(scored) queries and filtered index lists.
  """
  scored = np.asarray(scored, bool)
  if scored.shape != (len(dataset.queries),):
    raise ValueError(
      f'scored must be ({len(dataset.queries)},), got {scored.shape}'
    )
  keep = np.asarray(present, np.int64)
  rows = np.flatnonzero(scored)
  take = lambda lists: (
    None
    if lists is None
    else tuple(lists[q][np.isin(lists[q], keep)] for q in rows)
  )
  groups = dataset.groups
  if groups is not None:
    groups = np.where(np.isin(np.arange(len(groups)), keep), groups, -1)
  return dataset._replace(
    queries=tuple(dataset.queries[q] for q in rows),
    query_indices=dataset.query_indices[rows],
    boxes=None if dataset.boxes is None else dataset.boxes[rows],
    positives=take(dataset.positives),
    junk=take(dataset.junk),
    easy=take(dataset.easy),
    hard=take(dataset.hard),
    groups=groups,
  )


def evaluate(
  dataset,
  ranks,
  *,
  kappas: Sequence[int] = precision.KAPPAS,
  scored=None,
  present=None,
) -> dict[str, float]:
  """Scores rankings with the protocol of a `datasets.Dataset`.

  Args:
    dataset: a `regagg_jax.evaluation.datasets.Dataset` (only its ground-truth fields are read).
    ranks: int (Q, R) database indices per query, best first.
    kappas: cut-offs k of mP@k (Revisited and user folders).
    scored: bool (Q,) queries to score (the readable ones), default all;
      the rows of the others in `ranks` are ignored (`exclude_skipped`).
    present: int (N',) database indices that were read, default all.

  Returns:
    Fractions in [0, 1] (N-S in [0, 4]): {'mAP'} for Oxford5k, Paris6k and Holidays;
    {'easy/mAP', 'easy/mP@1', ...} for ROxford/RParis; {'N-S', 'mAP'} for UKBench;
    {'mAP', 'mP@1', ...} for user folders.
  """
  if scored is not None or present is not None:
    ranks = np.asarray(ranks)
    scored = np.ones(len(ranks), bool) if scored is None else scored
    present = np.arange(len(dataset.images)) if present is None else present
    dataset = exclude_skipped(dataset, scored, present)
    ranks = ranks[np.asarray(scored, bool)]
  if dataset.protocol == 'revisited':
    results = compute_revisited_map(
      ranks, dataset.easy, dataset.hard, dataset.junk, kappas=kappas
    )
    return {
      f'{setting}/{key}': value
      for setting, scores in results.items()
      for key, value in _flatten(scores).items()
    }
  if dataset.protocol == 'ukbench':
    query_groups = dataset.groups[dataset.query_indices]
    return {
      'N-S': ukbench_score(ranks, query_groups, dataset.groups),
      'mAP': ukbench_map(ranks, query_groups, dataset.groups),
    }
  if dataset.protocol == 'holidays':
    return {
      'mAP': holidays_map(ranks, dataset.positives, dataset.query_indices)
    }
  if dataset.protocol == 'oxford':
    return {
      'mAP': precision.mean_average_precision(
        ranks, dataset.positives, dataset.junk
      )
    }
  return _flatten(
    precision.compute_map(ranks, dataset.positives, dataset.junk, kappas=kappas)
  )


def _flatten(scores: precision.Scores) -> dict[str, float]:
  flat = {'mAP': scores.mean_ap}
  flat.update(
    {f'mP@{k}': float(p) for k, p in zip(scores.kappas, scores.mean_precision)}
  )
  return flat
