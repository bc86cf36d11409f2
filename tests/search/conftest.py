"""The region database and queries of the index tests, and float64 eq. (7)."""

import numpy as np
import pytest

NUM_IMAGES, NUM_REGIONS, DIM, NUM_QUERIES = 300, 6, 32, 8


def normalize(x):
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  return x / np.where(norm > 0, norm, 1.0)


@pytest.fixture(scope='module')
def data():
  """Clustered database (some invalid regions, image 7 has none) and queries."""
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(20, DIM))
  database = normalize(
    centers[rng.integers(0, 20, (NUM_IMAGES, NUM_REGIONS))]
    + 0.6 * rng.normal(size=(NUM_IMAGES, NUM_REGIONS, DIM))
  )
  valid = rng.random((NUM_IMAGES, NUM_REGIONS)) < 0.85
  valid[:, -1] = True
  valid[7] = False
  database = np.where(valid[..., None], database, 0.0).astype(np.float32)
  query = normalize(
    database[10 : 10 + NUM_QUERIES]
    + 0.2 * rng.normal(size=(NUM_QUERIES, NUM_REGIONS, DIM))
  )
  query[-2:] = normalize(rng.normal(size=(2, NUM_REGIONS, DIM)))  # fresh
  query_valid = rng.random((NUM_QUERIES, NUM_REGIONS)) < 0.8
  query_valid[:, 0] = True
  return database, valid, query.astype(np.float32), query_valid


def reference_similarity(query, query_valid, database, valid):
  """float64 eq. (7): scores (Q, N) and best database region (Q, N)."""
  pairs = np.einsum(
    'qad,nbd->qnab', query.astype(np.float64), database.astype(np.float64)
  )
  pairs[~query_valid[:, None, :, None] | ~valid[None, :, None, :]] = -np.inf
  per_target = pairs.max(axis=2)
  return per_target.max(axis=-1), per_target.argmax(axis=-1)
