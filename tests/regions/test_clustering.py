"""Tests for regagg_jax.regions.clustering (global fast k-means, paper Sec. 2 / [17])."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from regagg_jax.regions import clustering


def _blobs(seed, num_clusters, per_cluster, spread=20.0, extent=300.0):
  rng = np.random.default_rng(seed)
  centres = rng.uniform(0, extent, size=(num_clusters, 2))
  sizes = rng.integers(per_cluster // 2, per_cluster + 1, size=num_clusters)
  points = [
    c + rng.normal(0, spread * rng.uniform(0.5, 2.0), size=(n, 2))
    for c, n in zip(centres, sizes)
  ]
  return np.concatenate(points).astype(np.float32)


def _sse(points, labels, centres):
  points = np.asarray(points, np.float64)
  centres = np.asarray(centres, np.float64)
  keep = labels >= 0
  return float(np.sum((points[keep] - centres[labels[keep]]) ** 2))


def _numpy_lloyd_best(points, k, restarts=50, seed=0):
  """Best SSE of `restarts` random-initialisation Lloyd runs, float64."""
  rng = np.random.default_rng(seed)
  x = np.asarray(points, np.float64)
  best = np.inf
  for _ in range(restarts):
    centres = x[rng.choice(len(x), size=k, replace=False)].copy()
    for _ in range(300):
      d = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
      labels = d.argmin(1)
      new = np.array(
        [
          x[labels == j].mean(0) if np.any(labels == j) else centres[j]
          for j in range(k)
        ]
      )
      if np.allclose(new, centres):
        break
      centres = new
    d = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
    best = min(best, float(d.min(1).sum()))
  return best


def _numpy_bounds(points, nearest):
  """b_n = sum_j max(d^j - ||x_n - x_j||^2, 0), loops, float64."""
  x = np.asarray(points, np.float64)
  out = np.zeros(len(x))
  for n in range(len(x)):
    for j in range(len(x)):
      out[n] += max(nearest[j] - np.sum((x[n] - x[j]) ** 2), 0.0)
  return out


def _numpy_lloyd(x, centres):
  """Lloyd's k-means from `centres` (float64); empty clusters keep centres."""
  for _ in range(300):
    labels = ((x[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
    new = np.array(
      [
        x[labels == j].mean(0) if np.any(labels == j) else centres[j]
        for j in range(len(centres))
      ]
    )
    if np.array_equal(new, centres):
      break
    centres = new
  labels = ((x[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
  return labels, centres, float(((x - centres[labels]) ** 2).sum())


def _numpy_global_kmeans(points, k, num_candidates):
  """Global k-means [17] in float64: fast (1 candidate) or full (all)."""
  x = np.asarray(points, np.float64)
  centres = x.mean(0)[None]
  for _ in range(1, k):
    nearest = ((x[:, None] - centres[None]) ** 2).sum(-1).min(1)
    bounds = _numpy_bounds(x, nearest)
    order = np.argsort(-bounds, kind='stable')[:num_candidates]
    runs = [
      _numpy_lloyd(x, np.concatenate([centres, x[n][None]])) for n in order
    ]
    centres = min(runs, key=lambda run: run[2])[1]
  return _numpy_lloyd(x, centres)


@pytest.mark.parametrize(
  'seed,num_clusters', [(0, 3), (1, 3), (2, 4), (3, 2), (4, 3)]
)
def test_sse_not_worse_than_best_of_50_lloyd(seed, num_clusters):
  # Separated blobs: the fast variant is a heuristic and can lose a few per
  # cent on heavily overlapping ones (module docstring).
  points = _blobs(seed, num_clusters, 40, spread=8.0)
  valid = np.ones(len(points), bool)
  labels, centres = clustering.global_fast_kmeans(
    jnp.asarray(points), jnp.asarray(valid), num_clusters=num_clusters
  )
  labels = np.asarray(labels)
  assert labels.dtype == np.int32 and labels.shape == (len(points),)
  assert centres.shape == (num_clusters, 2)
  ours = _sse(points, labels, centres)
  best = _numpy_lloyd_best(points, num_clusters)
  assert ours <= best * (1 + 1e-5)
  # Centres are the means of their clusters (Lloyd converged).
  for j in range(num_clusters):
    np.testing.assert_allclose(
      np.asarray(centres[j]),
      points[labels == j].astype(np.float64).mean(0),
      rtol=1e-4,
      atol=1e-3,
    )


@pytest.mark.parametrize(
  'seed,num_blobs,num_clusters,num_candidates',
  [
    (9, 3, 3, 1),
    (11, 4, 3, 1),
    (3, 5, 4, 1),
    (9, 3, 3, 1000),
    (11, 4, 3, 1000),
  ],
)
def test_matches_numpy_global_kmeans(
  seed, num_blobs, num_clusters, num_candidates
):
  # Overlapping blobs, where the fast and full variants differ.
  points = _blobs(seed, num_blobs, 16)
  valid = np.ones(len(points), bool)
  labels, centres = clustering.global_fast_kmeans(
    jnp.asarray(points),
    jnp.asarray(valid),
    num_clusters=num_clusters,
    num_candidates=num_candidates,
  )
  want_labels, want_centres, want_sse = _numpy_global_kmeans(
    points, num_clusters, num_candidates
  )
  np.testing.assert_array_equal(np.asarray(labels), want_labels)
  np.testing.assert_allclose(
    np.asarray(centres), want_centres, rtol=1e-5, atol=1e-3
  )
  np.testing.assert_allclose(
    _sse(points, np.asarray(labels), centres), want_sse, rtol=1e-5
  )


def test_bounds_match_numpy_reference():
  points = _blobs(7, 3, 15)
  valid = np.ones(len(points), bool)
  valid[[3, 10]] = False
  nearest = np.random.default_rng(0).uniform(0, 2000, len(points))
  got = jax.jit(clustering.compute_bounds, static_argnames='chunk_size')(
    jnp.asarray(points),
    jnp.asarray(valid),
    jnp.asarray(nearest, jnp.float32),
    chunk_size=8,
  )
  keep = np.flatnonzero(valid)
  want = _numpy_bounds(points[keep], nearest[keep])
  np.testing.assert_allclose(np.asarray(got)[keep], want, rtol=1e-4, atol=1e-2)
  assert np.all(np.isneginf(np.asarray(got)[~valid]))


def test_deterministic():
  points = jnp.asarray(_blobs(5, 4, 50))
  valid = jnp.ones(points.shape[0], bool)
  first = clustering.global_fast_kmeans(points, valid, num_clusters=3)
  for _ in range(3):
    again = clustering.global_fast_kmeans(points, valid, num_clusters=3)
    np.testing.assert_array_equal(np.asarray(first[0]), np.asarray(again[0]))
    np.testing.assert_array_equal(np.asarray(first[1]), np.asarray(again[1]))


def test_mask_invariance_and_invalid_labels():
  points = _blobs(11, 3, 30)
  valid = np.ones(len(points), bool)
  labels, centres = clustering.global_fast_kmeans(
    jnp.asarray(points), jnp.asarray(valid), num_clusters=3
  )
  # Interleave far-away garbage points marked invalid, and pad at the end.
  rng = np.random.default_rng(1)
  garbage = rng.uniform(-1e4, 1e4, size=(len(points) + 17, 2))
  mixed = np.empty((2 * len(points) + 17, 2), np.float32)
  mixed_valid = np.zeros(len(mixed), bool)
  mixed[0 : 2 * len(points) : 2] = points
  mixed_valid[0 : 2 * len(points) : 2] = True
  mixed[1 : 2 * len(points) : 2] = garbage[: len(points)]
  mixed[2 * len(points) :] = garbage[len(points) :]
  mixed_labels, mixed_centres = clustering.global_fast_kmeans(
    jnp.asarray(mixed), jnp.asarray(mixed_valid), num_clusters=3
  )
  mixed_labels = np.asarray(mixed_labels)
  np.testing.assert_array_equal(mixed_labels[mixed_valid], np.asarray(labels))
  assert np.all(mixed_labels[~mixed_valid] == -1)
  np.testing.assert_allclose(
    np.asarray(mixed_centres), np.asarray(centres), rtol=1e-5, atol=1e-3
  )


def test_vmap_matches_single():
  sets = [_blobs(s, 3, 40)[:50] for s in (20, 21)]
  points = np.stack(sets)
  valid = np.ones(points.shape[:2], bool)
  valid[1, 40:] = False
  fn = lambda p, v: clustering.global_fast_kmeans(p, v, num_clusters=3)
  labels, centres = jax.vmap(fn)(jnp.asarray(points), jnp.asarray(valid))
  for b in range(2):
    single = fn(jnp.asarray(points[b]), jnp.asarray(valid[b]))
    np.testing.assert_array_equal(np.asarray(labels[b]), np.asarray(single[0]))
    np.testing.assert_allclose(
      np.asarray(centres[b]), np.asarray(single[1]), rtol=1e-6, atol=1e-4
    )


def test_degenerate_sets():
  # Fewer distinct points than clusters: still well defined, SSE zero.
  points = jnp.asarray([[1.0, 2.0], [1.0, 2.0], [5.0, 5.0], [0.0, 0.0]])
  valid = jnp.asarray([True, True, True, False])
  labels, centres = clustering.global_fast_kmeans(points, valid, num_clusters=3)
  labels = np.asarray(labels)
  assert labels[3] == -1 and labels[0] == labels[1] != labels[2]
  assert _sse(np.asarray(points), labels, centres) == 0.0
  # No valid point at all.
  labels, centres = clustering.global_fast_kmeans(
    points, jnp.zeros(4, bool), num_clusters=3
  )
  assert np.all(np.asarray(labels) == -1)
  assert np.all(np.isfinite(np.asarray(centres)))


def test_bad_inputs_raise():
  points = jnp.zeros((5, 2))
  with pytest.raises(ValueError):
    clustering.global_fast_kmeans(jnp.zeros((5, 3)), jnp.ones(5, bool))
  with pytest.raises(ValueError):
    clustering.global_fast_kmeans(points, jnp.ones(4, bool))
  with pytest.raises(TypeError):
    clustering.global_fast_kmeans(points, jnp.ones(5, jnp.int32))
  with pytest.raises(TypeError):
    clustering.global_fast_kmeans(
      jnp.zeros((5, 2), jnp.int32), jnp.ones(5, bool)
    )
  with pytest.raises(ValueError):
    clustering.global_fast_kmeans(points, jnp.ones(5, bool), num_clusters=0)
