"""Figures: the paper's Fig. 2 and pictures of search results (cv2 only).

draw_results  Fig. 2: queries beside their top results, coloured by the
              ground truth, with ranks, scores and the matched regions
draw_search   the same for --mode=search, without ground truth

A legend on top names the frame colours and the shading; each tile has a
caption (rank and score, file name) below it.
"""

import os

import cv2
import numpy as np

from regagg_jax.evaluation import datasets
from regagg_jax.features import images
from regagg_jax.features import reading
from regagg_jax.storage import atomic

QUERY = (0, 90, 255)
RESULT = (70, 70, 70)
MARKS = {
  'relevant': (0, 170, 0),
  'irrelevant': (220, 0, 0),
  'junk': (150, 150, 150),
}
"""RGB frame colours: the query, a result without ground truth, and the
results judged by it."""
SHADE = (255, 220, 0)
"""RGB of the best-matched region pair (eq. 7), shaded and outlined."""

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_GAP = 6
_LINE = 14  # caption line height, px


def _thumbnail(image, mask, mark, *, height):
  """Shades a bool (H, W) cell mask on the image, outlines it, frames the
  tile with `mark` (RGB) and resizes it to `height` pixels."""
  if mask is not None:
    cells = np.kron(
      mask.astype(np.uint8), np.ones((images.STRIDE, images.STRIDE), np.uint8)
    )
    cells = np.ascontiguousarray(cells[: image.shape[0], : image.shape[1]])
    shaded = image.astype(np.float32)
    shaded[cells > 0] = 0.6 * shaded[cells > 0] + 0.4 * np.float32(SHADE)
    image = shaded.astype(np.uint8)
    contours, _ = cv2.findContours(
      cells, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    thickness = max(1, image.shape[0] // height * 2)
    cv2.drawContours(image, contours, -1, SHADE, thickness)
  width = max(1, round(image.shape[1] * height / image.shape[0]))
  image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
  cv2.rectangle(image, (0, 0), (width - 1, height - 1), mark, 4)
  return image


def _text(canvas, text, x, y, *, width):
  """Writes one line of black text at baseline (x, y), cut to `width` px."""
  while text and cv2.getTextSize(text, _FONT, 0.4, 1)[0][0] > width:
    text = text[:-1]
  cv2.putText(canvas, text, (x, y), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)


def _tile(image, mask, mark, lines, *, height):
  """A thumbnail with its caption lines below it on white."""
  thumbnail = _thumbnail(image, mask, mark, height=height)
  tile = np.full(
    (height + _LINE * len(lines) + 4, thumbnail.shape[1], 3), 255, np.uint8
  )
  tile[:height] = thumbnail
  for number, line in enumerate(lines):
    y = height + _LINE * (number + 1)
    _text(tile, line, 2, y, width=tile.shape[1] - 4)
  return tile


def _legend(entries):
  """A strip of colour swatches and their meanings."""
  strip = np.full((24, 4000, 3), 255, np.uint8)
  x = _GAP
  for colour, label in entries:
    cv2.rectangle(strip, (x, 5), (x + 14, 19), colour, -1)
    _text(strip, label, x + 19, 16, width=1000)
    x += 19 + cv2.getTextSize(label, _FONT, 0.4, 1)[0][0] + 3 * _GAP
  return strip[:, :x]


def _write(path, legend, rows):
  """Stacks the legend and the rows of tiles on white; writes the PNG."""
  lines = [
    np.concatenate(
      [
        np.pad(x, ((0, 0), (0, _GAP), (0, 0)), constant_values=255) for x in row
      ],
      axis=1,
    )
    for row in rows
  ]
  width = max(legend.shape[1], *(line.shape[1] for line in lines))
  canvas = np.full(
    (legend.shape[0] + sum(line.shape[0] + _GAP for line in lines), width, 3),
    255,
    np.uint8,
  )
  canvas[: legend.shape[0], : legend.shape[1]] = legend
  top = legend.shape[0]
  for line in lines:
    canvas[top : top + line.shape[0], : line.shape[1]] = line
    top += line.shape[0] + _GAP
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  extension = os.path.splitext(path)[1] or '.png'
  ok, encoded = cv2.imencode(extension, canvas[..., ::-1])
  if not ok:
    raise ValueError(
      f'{path}: OpenCV could not encode the figure as {extension}'
    )
  atomic.atomic_write(path, lambda stream: stream.write(encoded.tobytes()))


def _row(read, query, results, *, height):
  """Tiles of one query and its results.

  Args:
    read: path, box -> uint8 (H_I, W_I, 3) image as it was encoded.
    query: (path, box or None, bool (H, W) matched cell mask or None).
    results: (path, bool (H, W) mask, RGB frame, rank, score) per result.
    height: thumbnail height in pixels.
  """
  path, box, mask = query
  tiles = [
    _tile(
      read(path, box),
      mask,
      QUERY,
      ['query', os.path.basename(path)],
      height=height,
    )
  ]
  for result, result_mask, mark, rank, score in results:
    tiles.append(
      _tile(
        read(result, None),
        result_mask,
        mark,
        [f'#{rank} {score:.3f}', os.path.basename(result)],
        height=height,
      )
    )
  return tiles


def _cells(store, row, region):
  """bool (H, W) cells of region `region` of a store row."""
  h, w = store.grid[row]
  return store.masks[row, region, :h, :w]


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
  queries=None,
  query_regions=None,
  height=128,
):
  """Draws a figure like the paper's Fig. 2 as a PNG.

  Each row: a query (blue frame, cropped to its box if `boxes`) beside its
  top `num_results` results (the query's own image left out), each with
  its rank and eq. (7) score, the region best-matched to the query shaded
  yellow and outlined, and the frame green / red / gray for relevant /
  irrelevant / junk. With `queries` and `query_regions`, the query shows
  its side of the pair matched to its first drawn result.

  Args:
    path: PNG file to write.
    dataset: datasets.Dataset (queries, positives, junk, apply_exif).
    database: records.Store the ranking refers to.
    ranking: retrieval.Ranking of the query store (scores, ranks, best).
    positions: int (Q,) query store row of each dataset query (-1: none).
    max_size: features.max_size the store was encoded with.
    num_queries: rows drawn, queries spread evenly over the dataset's.
    num_results: results per row.
    boxes: float (Q, 4) query crops, or None.
    queries: records.Store of the query store rows, or None.
    query_regions: int (Q', num_results + 1) query region m of eq. (7)'s
      pair with each of the first ranked results of every query store row.
    height: thumbnail height in pixels.
  """
  picks = np.unique(np.linspace(0, len(positions) - 1, num_queries).round())
  rows = np.asarray(database.metadata['rows'])
  query_paths = datasets.query_paths(dataset)
  read = lambda image, box: reading.load(  # pylint: disable=g-long-lambda
    image, box=box, max_size=max_size, apply_exif=dataset.apply_exif
  )
  drawn = []
  for q in picks.astype(int):
    p = positions[q]
    if p < 0:
      continue
    kept = [
      (j, r)
      for j, r in enumerate(ranking.ranks[p, : num_results + 1])
      if database.image_paths[r] != str(query_paths[q])
    ][:num_results]
    results = []
    for j, r in kept:
      label = (
        'relevant'
        if rows[r] in dataset.positives[q]
        else 'junk'
        if rows[r] in dataset.junk[q]
        else 'irrelevant'
      )
      mask = _cells(database, r, ranking.best[p, r])
      score = ranking.scores[p, r]
      results.append(
        (database.image_paths[r], mask, MARKS[label], j + 1, score)
      )
    mask = None
    if query_regions is not None and kept:
      mask = _cells(queries, p, query_regions[p, kept[0][0]])
    box = None if boxes is None else boxes[q]
    drawn.append(
      _row(read, (query_paths[q], box, mask), results, height=height)
    )
  legend = _legend(
    [(QUERY, 'query')]
    + [(colour, label) for label, colour in MARKS.items()]
    + [(SHADE, 'best-matched region pair (eq. 7); #rank score')]
  )
  _write(path, legend, drawn)


def draw_search(
  path,
  queries,
  database,
  ranking,
  query_regions,
  *,
  max_size,
  num_results,
  boxes=None,
  apply_exif=True,
  height=128,
):
  """Draws --mode=search's results as a PNG: one row per query (blue
  frame, cropped to its box) and its top `num_results` results (gray
  frames) with rank and eq. (7) score; the best-matched region pair is
  shaded yellow on the query (its side of the pair with the first result)
  and on each result.

  Args:
    path: PNG file to write.
    queries: records.Store of the Q queries.
    database: records.Store the ranking refers to.
    ranking: retrieval.Ranking of the queries (scores, ranks, best).
    query_regions: int (Q, num_results) query region m of eq. (7)'s pair
      with each of the first ranked results.
    max_size: features.max_size the stores were encoded with.
    num_results: results per row.
    boxes: float (Q, 4) query crops, or None.
    apply_exif: the images' EXIF orientation was applied when encoding.
    height: thumbnail height in pixels.
  """
  read = lambda image, box: reading.load(  # pylint: disable=g-long-lambda
    image, box=box, max_size=max_size, apply_exif=apply_exif
  )
  drawn = []
  for q, query in enumerate(queries.image_paths):
    results = [
      (
        database.image_paths[r],
        _cells(database, r, ranking.best[q, r]),
        RESULT,
        j + 1,
        ranking.scores[q, r],
      )
      for j, r in enumerate(ranking.ranks[q, :num_results])
    ]
    mask = _cells(queries, q, query_regions[q, 0])
    box = None if boxes is None else boxes[q]
    drawn.append(_row(read, (query, box, mask), results, height=height))
  legend = _legend(
    [(QUERY, 'query'), (RESULT, 'result')]
    + [(SHADE, 'best-matched region pair (eq. 7); #rank score')]
  )
  _write(path, legend, drawn)
