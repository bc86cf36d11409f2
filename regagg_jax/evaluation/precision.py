"""AP, mAP and mP@k of rankings (host, numpy): the benchmarks' common core.

Every function here is plain numpy on the host and can be used on its own by
other research code:

    from regagg_jax.evaluation import precision
    ap = precision.average_precision(ranked_ids, positive_ids, junk_ids)

The average precision is the one of the Oxford Buildings benchmark program
(`compute_ap.cpp`, Philbin et al.), also used by the Revisited Oxford/Paris
code (`compute_ap` in revisitop's evaluate.py) and by the INRIA Holidays script
(`holidays_map.py`): junk images are dropped from the ranking without advancing
the rank, and the precision-recall curve is integrated with the trapezoidal
rule. For the positive found at rank r (0-based, junk removed) after j earlier
positives, the trapezoid between recall j/P and (j+1)/P has heights

    precision_0 = j / r  (1.0 when r == 0),   precision_1 = (j + 1) / (r + 1),

and AP = sum (precision_0 + precision_1) / (2 P) over the retrieved positives,
where P is the number of distinct positives of the query (positives never
retrieved add nothing). A query with P == 0 has AP = NaN and is left out of
every mean, as revisitop does.

Batched functions take `ranks`: int (Q, R) database indices in rank order
(best first), R <= N (a truncated ranking is fine), with per-query ground truth
given as sequences of Q int arrays of database indices.
"""

from typing import NamedTuple, Sequence

import numpy as np

KAPPAS = (1, 5, 10)  # mP@k cut-offs of the Revisited Oxford/Paris protocol.


class Scores(NamedTuple):
  """mAP and mean precision at k of one protocol.

  Attributes:
    mean_ap: float mean of `aps` over the queries that have positives.
    mean_precision: float64 (len(kappas),) mean of `precisions` over them.
    aps: float64 (Q,) AP per query, NaN for queries without positives.
    precisions: float64 (Q, len(kappas)) revisitop precision at each k (NaN likewise).
    kappas: the cut-offs k of `precisions`.
  """

  mean_ap: float
  mean_precision: np.ndarray
  aps: np.ndarray
  precisions: np.ndarray
  kappas: tuple[int, ...]


def average_precision(ranked_ids, positive_ids, junk_ids=()) -> float:
  """Official trapezoidal AP of one ranked list (Oxford `compute_ap.cpp`).

  Ids may be database indices or names (anything numpy compares with `==`).
  An id that is both positive and junk is skipped as junk but still counts in
  the number of positives, exactly as `compute_ap.cpp` does.

  Args:
    ranked_ids: (R,) retrieved ids, best first, no repeats.
    positive_ids: (P,) ids of the relevant images.
    junk_ids: (J,) ids to ignore (removed from the ranking, rank not advanced).

  Returns:
    The AP in [0, 1]; NaN when there are no positives.

  Raises:
    ValueError: if `ranked_ids` is not 1-D or has repeated ids.
  """
  ranked = np.asarray(ranked_ids)
  if ranked.ndim != 1:
    raise ValueError(f'ranked_ids must be 1-D, got shape {ranked.shape}')
  if np.unique(ranked).size != ranked.size:
    raise ValueError('ranked_ids has repeated ids')
  positives = np.unique(np.asarray(positive_ids))
  junk = np.asarray(junk_ids)
  kept = ranked[~np.isin(ranked, junk)] if junk.size else ranked
  relevant = np.isin(kept, positives)[None, :]
  return float(_trapezoid_ap(relevant, np.array([positives.size]))[0])


def ranks_from_scores(scores: np.ndarray) -> np.ndarray:
  """Ranks database images by decreasing score (ties keep index order).

  Args:
    scores: float (Q, N) query-to-database similarities (eq. 7 / eq. 8).

  Returns:
    int64 (Q, N) database indices, best first.
  """
  scores = np.asarray(scores)
  if scores.ndim != 2:
    raise ValueError(f'scores must be (Q, N), got shape {scores.shape}')
  return np.argsort(-scores, axis=1, kind='stable')


def compute_map(
  ranks,
  positives: Sequence,
  junk: Sequence | None = None,
  *,
  kappas: Sequence[int] = KAPPAS,
) -> Scores:
  """mAP and mP@k of a batch of rankings (revisitop `compute_map`).

  Precision at k follows revisitop: with the 1-based junk-free ranks of the
  retrieved positives, k is first lowered to the rank of the last retrieved
  positive, kq = min(max rank, k), and precision = #(ranks <= kq) / kq (0 when
  no positive is retrieved).

  Args:
    ranks: int (Q, R) database indices per query, best first.
    positives: Q int arrays of relevant database indices.
    junk: Q int arrays of ignored database indices, or None for none.
    kappas: cut-offs k of mP@k.

  Returns:
    `Scores`; queries without positives are NaN and excluded from the means.
  """
  ranks = check_ranks(ranks)
  if any(int(k) < 1 for k in kappas):
    raise ValueError(f'kappas must be positive cut-offs, got {tuple(kappas)}')
  labels, num_positives = _label_ranks(ranks, positives, junk)
  kept = labels >= 0
  relevant = labels == 1
  # Compact each row so that junk is removed without advancing the rank.
  order = np.argsort(~kept, axis=1, kind='stable')
  relevant = np.take_along_axis(relevant, order, axis=1)
  aps = _trapezoid_ap(relevant, num_positives)
  precisions = _revisited_precision(relevant, tuple(kappas))
  empty = num_positives == 0
  precisions[empty] = np.nan
  if np.all(empty):
    mean_ap, mean_precision = float('nan'), np.full(len(kappas), np.nan)
  else:
    mean_ap = float(np.mean(aps[~empty]))
    mean_precision = np.mean(precisions[~empty], axis=0)
  return Scores(mean_ap, mean_precision, aps, precisions, tuple(kappas))


def mean_average_precision(
  ranks, positives: Sequence, junk: Sequence | None = None
) -> float:
  """mAP of a batch of rankings (Oxford5k / Paris6k protocol).

  Args:
    ranks: int (Q, R) database indices per query, best first.
    positives: Q int arrays (good and ok images for Oxford/Paris).
    junk: Q int arrays of junk images, or None.

  Returns:
    The mean AP over the queries that have positives.
  """
  return compute_map(ranks, positives, junk, kappas=()).mean_ap


def check_ranks(ranks) -> np.ndarray:
  """int (Q, R) rankings as an array; raises unless 2-D, integer, >= 0 and
  without a repeated index in a row."""
  ranks = np.asarray(ranks)
  if ranks.ndim != 2:
    raise ValueError(f'ranks must be (Q, R), got shape {ranks.shape}')
  if not np.issubdtype(ranks.dtype, np.integer):
    raise TypeError(
      f'ranks must hold integer database indices, got {ranks.dtype}'
    )
  if ranks.size and ranks.min() < 0:
    raise ValueError('ranks holds negative database indices')
  ordered = np.sort(ranks, axis=1)
  if np.any(ordered[:, 1:] == ordered[:, :-1]):
    raise ValueError('a row of ranks has repeated database indices')
  return ranks


def _label_ranks(ranks: np.ndarray, positives: Sequence, junk: Sequence | None):
  """Labels every ranked image: 1 positive, -1 junk (junk wins), 0 other.

  Returns:
    labels int8 (Q, R) and num_positives int64 (Q,) distinct positives.
  """
  num_queries = ranks.shape[0]
  junk = [()] * num_queries if junk is None else junk
  if len(positives) != num_queries or len(junk) != num_queries:
    raise ValueError(
      f'need {num_queries} positive and junk lists, got '
      f'{len(positives)} and {len(junk)}'
    )
  positives = [np.asarray(p, np.int64).ravel() for p in positives]
  junk = [np.asarray(j, np.int64).ravel() for j in junk]
  size = 1 + max(
    [ranks.max(initial=-1)] + [a.max(initial=-1) for a in positives + junk]
  )
  table = np.zeros((num_queries, size), np.int8)
  rows = lambda lists: np.repeat(
    np.arange(num_queries), [a.size for a in lists]
  )
  table[rows(positives), np.concatenate(positives)] = 1
  num_positives = np.sum(table == 1, axis=1).astype(np.int64)
  table[rows(junk), np.concatenate(junk)] = -1
  return np.take_along_axis(table, ranks, axis=1), num_positives


def _trapezoid_ap(
  relevant: np.ndarray, num_positives: np.ndarray
) -> np.ndarray:
  """Trapezoidal AP of junk-free rankings.

  Args:
    relevant: bool (Q, R) whether the image at junk-free rank r is positive.
    num_positives: int (Q,) positives of each query, retrieved or not.

  Returns:
    float64 (Q,) AP, NaN where num_positives == 0.
  """
  rank = np.arange(relevant.shape[1], dtype=np.float64)[None, :]
  earlier = np.cumsum(relevant, axis=1) - relevant  # j: positives before rank r
  precision_0 = np.where(rank == 0, 1.0, earlier / np.maximum(rank, 1.0))
  precision_1 = (earlier + 1.0) / (rank + 1.0)
  total = np.sum(np.where(relevant, precision_0 + precision_1, 0.0), axis=1)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(num_positives > 0, total / (2.0 * num_positives), np.nan)


def _revisited_precision(
  relevant: np.ndarray, kappas: tuple[int, ...]
) -> np.ndarray:
  """revisitop precision at each kappa: k lowered to the last positive's rank."""
  rank = np.arange(1, relevant.shape[1] + 1)[None, :]
  last = np.max(np.where(relevant, rank, 0), axis=1)  # 1-based, 0 if none
  precisions = np.zeros((relevant.shape[0], len(kappas)))
  for column, kappa in enumerate(kappas):
    cutoff = np.minimum(last, kappa)
    hits = np.sum(relevant & (rank <= cutoff[:, None]), axis=1)
    precisions[:, column] = np.where(
      cutoff > 0, hits / np.maximum(cutoff, 1), 0.0
    )
  return precisions
