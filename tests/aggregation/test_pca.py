"""Tests of regagg_jax.aggregation.pca against a float64 numpy SVD reference (eq. 4, 6)."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from regagg_jax.aggregation import pca


def correlated_rows(rng, num_rows, dim):
  mixing = rng.normal(size=(dim, dim)) * rng.gamma(1.0, size=dim)
  return (rng.normal(size=(num_rows, dim)) @ mixing + 3.0).astype(np.float32)


def reference_pca(x, dim, center=True):
  """Principal directions (sign: largest entry positive) and variances."""
  x = x.astype(np.float64)
  centred = x - x.mean(0) if center else x
  _, singular, vt = np.linalg.svd(centred, full_matrices=False)
  components = vt[:dim].T
  signs = np.sign(components[np.abs(components).argmax(0), np.arange(dim)])
  return components * signs, singular[:dim] ** 2 / x.shape[0]


@pytest.mark.parametrize('num_rows', [200, 20])  # covariance / Gram branch
def test_fit_matches_svd(num_rows):
  rng = np.random.default_rng(0)
  x = correlated_rows(rng, num_rows, 32)
  params = pca.fit(x, 8)
  components, _ = reference_pca(x, 8)
  assert params.components.shape == (32, 8)
  assert params.components.dtype == jnp.float32
  np.testing.assert_allclose(params.components, components, atol=1e-5)
  np.testing.assert_allclose(
    params.mean, x.astype(np.float64).mean(0), rtol=1e-6
  )
  np.testing.assert_array_equal(params.scale, 1.0)
  uncentred = pca.fit(x, 8, center=False)
  np.testing.assert_array_equal(uncentred.mean, 0.0)
  np.testing.assert_allclose(
    uncentred.components, reference_pca(x, 8, center=False)[0], atol=1e-5
  )


def test_whitening_gives_identity_covariance():
  rng = np.random.default_rng(1)
  x = correlated_rows(rng, 500, 24)
  params = pca.fit(x, 10, whiten=True)
  _, variances = reference_pca(x, 10)
  np.testing.assert_allclose(params.scale, 1 / np.sqrt(variances), rtol=1e-5)
  whitened = (
    (x.astype(np.float64) - np.asarray(params.mean, np.float64))
    @ np.asarray(params.components, np.float64)
    * np.asarray(params.scale, np.float64)
  )
  np.testing.assert_allclose(
    np.cov(whitened.T, bias=True), np.eye(10), atol=1e-4
  )


def test_mask_ignores_padded_rows():
  rng = np.random.default_rng(2)
  x = correlated_rows(rng, 100, 16)
  padded = np.concatenate([x, 1e3 * rng.normal(size=(7, 16))]).astype(
    np.float32
  )
  mask = np.arange(107) < 100
  for whiten in (False, True):
    expected = pca.fit(x, 6, whiten=whiten)
    got = pca.fit(padded, 6, whiten=whiten, mask=mask)
    for name in ('mean', 'components', 'scale'):
      np.testing.assert_allclose(
        getattr(got, name), getattr(expected, name), rtol=1e-5, atol=1e-6
      )


def test_apply_projects_whitens_and_normalises():
  rng = np.random.default_rng(3)
  x = correlated_rows(rng, 300, 20)
  params = pca.fit(x, 5, whiten=True)
  batch = x[:12].reshape(3, 4, 20)
  got = jax.jit(pca.apply)(params, batch)
  components, variances = reference_pca(x, 5)
  expected = (
    (batch.astype(np.float64) - x.astype(np.float64).mean(0))
    @ components
    / np.sqrt(variances)
  )
  expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
  assert got.shape == (3, 4, 5) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, atol=1e-4)
  valid = np.ones((3, 4), bool)
  valid[1, 2] = valid[2, 0] = False
  masked = jax.jit(pca.apply)(params, batch, valid)
  np.testing.assert_array_equal(masked[~valid], 0.0)
  np.testing.assert_allclose(masked[valid], got[valid], atol=1e-7)


def test_l2_normalize_keeps_zero():
  x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
  np.testing.assert_allclose(
    jax.jit(pca.l2_normalize)(x), [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6
  )


def test_rank_deficient_whitening_is_finite():
  rng = np.random.default_rng(4)
  x = (rng.normal(size=(50, 3)) @ rng.normal(size=(3, 12))).astype(np.float32)
  params = pca.fit(x, 6, whiten=True)
  assert np.all(np.isfinite(params.scale))
  assert np.all(np.isfinite(pca.apply(params, x)))


def test_orbax_round_trip(tmp_path):
  rng = np.random.default_rng(5)
  params = pca.fit(correlated_rows(rng, 60, 8), 4, whiten=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / 'pca', params)
  checkpointer.wait_until_finished()
  restored = checkpointer.restore(tmp_path / 'pca', params)
  assert isinstance(restored, pca.PCAParams)
  for name in ('mean', 'components', 'scale'):
    np.testing.assert_array_equal(
      getattr(restored, name), getattr(params, name)
    )


def test_bad_inputs_raise():
  x = np.zeros((10, 6), np.float32)
  with pytest.raises(ValueError):
    pca.fit(x[0], 2)
  with pytest.raises(ValueError):
    pca.fit(x, 7)
  with pytest.raises(TypeError):
    pca.fit(x.astype(np.int32), 2)
  with pytest.raises(ValueError):
    pca.fit(x, 2, mask=np.ones(9, bool))
  with pytest.raises(TypeError):
    pca.fit(x, 2, mask=np.ones(10, np.int32))
  with pytest.raises(ValueError):
    pca.fit(x, 2, mask=np.zeros(10, bool))
  params = pca.fit(np.random.default_rng(6).normal(size=(10, 6)), 2)
  with pytest.raises(ValueError):
    pca.apply(params, np.zeros((3, 5), np.float32))
  with pytest.raises(TypeError):
    pca.apply(params, np.zeros((3, 6), np.int32))
  with pytest.raises(ValueError):
    pca.apply(params, np.zeros((3, 6), np.float32), np.ones(4, bool))


def test_components_outside_the_span_get_no_whitening_scale():
  rng = np.random.default_rng(6)
  x = (rng.normal(size=(50, 3)) @ rng.normal(size=(3, 12))).astype(np.float32)
  params = pca.fit(x, 6, whiten=True)
  centred = x.astype(np.float64) - x.astype(np.float64).mean(axis=0)
  values = np.linalg.eigvalsh(centred.T @ centred / len(x))[::-1][:3]
  np.testing.assert_allclose(params.scale[:3], 1 / np.sqrt(values), rtol=1e-4)
  np.testing.assert_array_equal(params.scale[3:], 0)  # rank 3: noise only


@pytest.mark.parametrize(
  'num_vectors, dim, whiten, expected',
  [
    (100_000, 512, True, (512, True)),  # plenty: as asked
    (16 * 100, 512, True, (100, True)),  # capped, still >= 32
    (127, 512, True, (126, False)),  # 7 < 32: PCA up to the rank
    (56, 16, True, (16, False)),  # 3 < 16 asked: PCA at 16
    (448, 16, True, (16, True)),  # 28 per dimension
    (10, 512, False, (9, False)),  # no whitening: the rank only
  ],
)
def test_choose_whitening(num_vectors, dim, whiten, expected):
  choice = pca.choose_whitening(num_vectors, 8256, dim, whiten=whiten)
  assert (choice.dim, choice.whiten) == expected
  assert bool(choice.note) == (whiten and expected != (dim, True))
  assert pca.choose_whitening(50, 6, 512, min_vectors_per_dim=1).dim == 6


def test_choose_whitening_refuses_no_vectors():
  with pytest.raises(ValueError, match='num_vectors'):
    pca.choose_whitening(0, 8, 4)
