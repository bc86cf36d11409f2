"""Fig. 2 and the search picture: layout, legend, frames, shading, text."""

import cv2
import numpy as np
import pytest

from regagg_jax.evaluation import figures
from regagg_jax.evaluation.groundtruth import Dataset
from regagg_jax.storage import records
from regagg_jax.experiment import retrieval

HEIGHT = 128
TILE_HEIGHT = HEIGHT + 2 * 14 + 4  # thumbnail + two caption lines
TILE_WIDTH = 192  # a 64 x 96 image at 128 px high
LEGEND = 24


@pytest.fixture
def photos(tmp_path):
  """Four dark 64 x 96 photos (4 x 6 conv5_4 cells) and their store."""
  names = [f'p{i}.png' for i in range(4)]
  for i, name in enumerate(names):
    image = np.full((64, 96, 3), 20 + 10 * i, np.uint8)
    cv2.imwrite(str(tmp_path / name), image)
  masks = np.zeros((4, 2, 4, 6), bool)
  masks[:, 0, :2, :3] = True  # region 0: the top-left quarter
  masks[:, 1] = True  # region 1: the whole image
  store = records.Store(
    descriptors=np.zeros((4, 2, 3), np.float32),
    valid=np.ones((4, 2), bool),
    masks=masks,
    grid=np.array([[4, 6]] * 4, np.int32),
    image_paths=tuple(str(tmp_path / n) for n in names),
    reduction=None,
    metadata={'rows': [0, 1, 2, 3], 'sizes': [[64, 96]] * 4},
  )
  ranking = retrieval.Ranking(
    scores=np.array([[1.0, 0.75, 0.5, 0.25]] * 4, np.float32),
    ranks=np.array([[q, *[r for r in range(4) if r != q]] for q in range(4)]),
    best=np.zeros((4, 4), np.int32),
  )
  dataset = Dataset(
    name='four',
    protocol='custom',
    images=tuple(names),
    queries=tuple(names),
    query_indices=np.arange(4),
    boxes=None,
    positives=tuple(np.array([q ^ 1]) for q in range(4)),  # pairs
    junk=tuple(
      np.array([3 - q]) if q in (0, 3) else np.array([], int) for q in range(4)
    ),
    image_root=tmp_path,
  )
  return dataset, store, ranking


def _has(pixels, colour, *, tolerance=0):
  """Whether an RGB colour occurs in (H, W, 3) pixels."""
  difference = np.abs(pixels.astype(int) - np.array(colour)).max(axis=-1)
  return bool(np.any(difference <= tolerance))


def _shaded(pixels):
  """Whether some pixels are yellowish (figures.SHADE blended in)."""
  red, green, blue = np.moveaxis(pixels.astype(int), -1, 0)
  return bool(np.any((red - blue > 50) & (green - blue > 50)))


def _read(path):
  return cv2.imread(str(path))[..., ::-1]  # RGB


def test_fig2_has_a_legend_frames_captions_and_the_query_region(
  tmp_path, photos
):
  dataset, store, ranking = photos
  regions = np.zeros((4, 4), int)  # the query's top-left quarter
  drawn = {}
  for name, query_regions in (('with', regions), ('without', None)):
    drawn[name] = tmp_path / f'{name}.png'
    figures.draw_results(
      str(drawn[name]),
      dataset,
      store,
      ranking,
      np.arange(4),
      max_size=0,
      num_queries=2,
      num_results=3,
      queries=store,
      query_regions=query_regions,
    )
  canvas = _read(drawn['with'])
  assert canvas.shape[0] == LEGEND + 2 * (TILE_HEIGHT + 6)  # queries 0 and 3
  assert canvas.shape[1] == 4 * (TILE_WIDTH + 6)
  legend = canvas[:LEGEND]
  for colour in (figures.QUERY, figures.SHADE, *figures.MARKS.values()):
    assert _has(legend, colour), colour
  first = canvas[LEGEND : LEGEND + HEIGHT]
  query, result = first[:, :TILE_WIDTH], first[:, TILE_WIDTH + 6 :]
  assert _has(query[:3], figures.QUERY)  # the query's frame
  # query 0: 1 relevant (#2), 3 junk (#4), 2 irrelevant (#3)
  tiles = [result[:, i * (TILE_WIDTH + 6) :][:, :TILE_WIDTH] for i in range(3)]
  assert _has(tiles[0][:3], figures.MARKS['relevant'])
  assert _has(tiles[1][:3], figures.MARKS['irrelevant'])
  assert _has(tiles[2][:3], figures.MARKS['junk'])
  for tile in tiles:  # their best region (0) shaded yellow at the top left
    assert _shaded(tile[10:60, 10:90])
    assert not _shaded(tile[70:120, 110:180])
  assert _shaded(query[10:60, 10:90])
  bare = _read(drawn['without'])[LEGEND : LEGEND + HEIGHT, :TILE_WIDTH]
  assert not _shaded(bare[10:60, 10:90])
  captions = canvas[LEGEND + HEIGHT : LEGEND + TILE_HEIGHT]
  assert captions.min() < 100  # black text under every tile
  for i in range(4):
    column = captions[:, i * (TILE_WIDTH + 6) :][:, :TILE_WIDTH]
    assert column.min() < 100, i


def test_search_picture_shows_each_query_and_its_results(tmp_path, photos):
  _, store, ranking = photos
  queries = store._replace(
    image_paths=store.image_paths[:2],
    masks=store.masks[:2],
    grid=store.grid[:2],
    valid=store.valid[:2],
  )
  ranking = retrieval.Ranking(*(a[:2] for a in ranking))
  path = tmp_path / 'search.png'
  figures.draw_search(
    str(path),
    queries,
    store,
    ranking,
    np.ones((2, 4), int),  # the query's whole image
    max_size=0,
    num_results=4,
  )
  canvas = _read(path)
  assert canvas.shape == (
    LEGEND + 2 * (TILE_HEIGHT + 6),
    5 * (TILE_WIDTH + 6),
    3,
  )
  body = canvas[LEGEND:]
  assert _has(canvas[:LEGEND], figures.RESULT)
  assert _has(body, figures.QUERY) and _has(body, figures.RESULT)
  for colour in figures.MARKS.values():  # no ground truth, no judgement
    assert not _has(body[:3], colour)  # the frames' top edge
  query = body[:HEIGHT, :TILE_WIDTH]
  assert _shaded(query[60:110, 110:180])  # whole
