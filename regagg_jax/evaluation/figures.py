"""Figures: the paper's Fig. 2 (queries beside their best-matched results).

draw_results  PNG of queries, their top results, best-matched regions
"""

import os

import cv2
import numpy as np

from regagg_jax.evaluation import datasets
from regagg_jax.features import reading
from regagg_jax.features import images

_MARKS = {
  'relevant': (0, 170, 0),
  'irrelevant': (220, 0, 0),
  'junk': (150, 150, 150),
}
_SHADE = np.array([255, 220, 0], np.float32)  # yellow: best-matched region


def _thumbnail(image, mask, mark, *, height):
  """Shades a bool (H, W) cell mask on the image, marks the top-left corner
  and the frame with `mark` (RGB), and resizes to `height` pixels."""
  if mask is not None:
    cells = np.kron(
      mask.astype(np.uint8), np.ones((images.STRIDE, images.STRIDE), np.uint8)
    )
    cells = np.ascontiguousarray(cells[: image.shape[0], : image.shape[1]])
    shaded = image.astype(np.float32)
    shaded[cells > 0] = 0.6 * shaded[cells > 0] + 0.4 * _SHADE
    image = shaded.astype(np.uint8)
    contours, _ = cv2.findContours(
      cells, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    cv2.drawContours(
      image,
      contours,
      -1,
      tuple(int(v) for v in _SHADE),
      max(1, image.shape[0] // height * 2),
    )
  width = max(1, round(image.shape[1] * height / image.shape[0]))
  image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
  cv2.rectangle(image, (0, 0), (width - 1, height - 1), mark, 3)
  cv2.rectangle(image, (0, 0), (height // 8, height // 8), mark, -1)
  return image


def draw_results(
  path,
  dataset,
  database,
  ranking,
  positions,
  *,
  max_size,
  num_queries,
  num_results,
  boxes=None,
  height=128,
):
  """Draws a figure like the paper's Fig. 2 as a PNG.

  Each row: a query (blue frame, cropped to its box if `boxes`) beside its
  top `num_results` results (the query's own image left out), the region
  best-matched to the query (eq. 7) shaded yellow and outlined, and the
  corner marked green / red / gray for relevant / irrelevant / junk.

  Args:
    path: PNG file to write.
    dataset: datasets.Dataset (queries, positives, junk, apply_exif).
    database: records.Store the ranking refers to.
    ranking: pipeline.Ranking of the query store (ranks, best).
    positions: int (Q,) query store row of each dataset query (-1: none).
    max_size: features.max_size the store was encoded with.
    num_queries: rows drawn, queries spread evenly over the dataset's.
    num_results: results per row.
    boxes: float (Q, 4) query crops, or None.
    height: tile height in pixels.
  """
  picks = np.unique(np.linspace(0, len(positions) - 1, num_queries).round())
  rows = np.asarray(database.metadata['rows'])
  query_paths = datasets.query_paths(dataset)
  read = lambda path, box=None: reading.load(  # pylint: disable=g-long-lambda
    path, box=box, max_size=max_size, apply_exif=dataset.apply_exif
  )
  lines = []
  for q in picks.astype(int):
    if positions[q] < 0:
      continue
    query = read(query_paths[q], None if boxes is None else boxes[q])
    tiles = [_thumbnail(query, None, (0, 90, 255), height=height)]
    results = [
      r
      for r in ranking.ranks[positions[q]]
      if database.image_paths[r] != str(query_paths[q])
    ]
    for result in results[:num_results]:
      label = (
        'relevant'
        if rows[result] in dataset.positives[q]
        else 'junk'
        if rows[result] in dataset.junk[q]
        else 'irrelevant'
      )
      h, w = database.grid[result]
      mask = database.masks[result, ranking.best[positions[q], result], :h, :w]
      image = read(database.image_paths[result])
      tiles.append(_thumbnail(image, mask, _MARKS[label], height=height))
    gap = np.full((height, 6, 3), 255, np.uint8)
    lines.append(np.concatenate([x for t in tiles for x in (t, gap)], axis=1))
  canvas = np.full(
    (len(lines) * (height + 6), max(line.shape[1] for line in lines), 3),
    255,
    np.uint8,
  )
  for number, line in enumerate(lines):
    top = number * (height + 6)
    canvas[top : top + height, : line.shape[1]] = line
  os.makedirs(os.path.dirname(path), exist_ok=True)
  cv2.imwrite(path, canvas[..., ::-1])
