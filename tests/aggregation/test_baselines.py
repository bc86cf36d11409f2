"""Baselines (SPoC, MAC, CroW, GeM, R-MAC) against float64 numpy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regagg_jax.aggregation import baselines
from tests.aggregation.test_pooling import CHANNELS
from tests.aggregation.test_pooling import HEIGHT
from tests.aggregation.test_pooling import WIDTH
from tests.aggregation.test_pooling import padded_batch
from tests.aggregation.test_pooling import sparse_features


def reference_rmac_regions(features, levels=3, overlap=0.4, max_steps=7):
  """Tolias et al. region layout and l2-normalised region MACs, float64."""
  height, width = features.shape[:2]
  short, long = min(height, width), max(height, width)
  num_long = 1
  if long > short:
    gaps = [
      abs((short - (long - short) / (n - 1)) / short - overlap)
      for n in range(2, max_steps + 1)
    ]
    num_long = 2 + int(np.argmin(gaps))
  regions = []
  for level in range(1, levels + 1):
    side = math.floor(2 * short / (level + 1))
    count_long = level + num_long - 1
    for i in range(level):
      for j in range(count_long):
        start_short = math.floor(i * (short - side) / max(level - 1, 1))
        start_long = math.floor(j * (long - side) / max(count_long - 1, 1))
        y, x = (
          (start_long, start_short)
          if height >= width
          else (start_short, start_long)
        )
        if side >= 1:
          vec = (
            features[y : y + side, x : x + side].astype(np.float64).max((0, 1))
          )
          regions.append(vec / max(np.linalg.norm(vec), 1e-300))
  return np.array(regions)


def l2(vec):
  return vec / np.linalg.norm(vec)


def reference_baselines(features):
  """Float64 SPoC (plain, centre prior), MAC, CroW, GeM, R-MAC of one map."""
  f = features.astype(np.float64)
  height, width = f.shape[:2]
  ys, xs = np.mgrid[:height, :width]
  sigma = min(height, width) / 2 / 3
  prior = np.exp(
    -((ys - (height - 1) / 2) ** 2 + (xs - (width - 1) / 2) ** 2)
    / (2 * sigma**2)
  )
  summed = f.sum(-1)
  crow_alpha = np.sqrt(summed / np.sqrt((summed**2).sum()))
  fraction = (f > 0).mean((0, 1))
  crow_beta = np.log((f.shape[-1] * 1e-6 + fraction.sum()) / (1e-6 + fraction))
  return {
    'spoc': l2(f.sum((0, 1))),
    'spoc_prior': l2((prior[..., None] * f).sum((0, 1))),
    'mac': l2(f.max((0, 1))),
    'crow': l2(crow_beta * (crow_alpha[..., None] * f).sum((0, 1))),
    'gem': l2(np.mean(np.maximum(f, 1e-6) ** 3, (0, 1)) ** (1 / 3)),
    'rmac': l2(reference_rmac_regions(f).sum(0)),
  }


BASELINES = {
  'spoc': baselines.spoc,
  'spoc_prior': lambda f, v: baselines.spoc(f, v, center_prior=True),
  'mac': baselines.mac,
  'crow': baselines.crow,
  'gem': baselines.gem,
  'rmac': baselines.rmac,
}


def test_baselines_match_references_and_ignore_padding():
  rng = np.random.default_rng(5)
  features, valid, shapes = padded_batch(rng)
  for name, fn in BASELINES.items():
    batched = jax.jit(jax.vmap(fn))(features, valid)
    assert batched.shape == (3, CHANNELS) and batched.dtype == jnp.float32
    for i, (rows, cols) in enumerate(shapes):
      expected = reference_baselines(features[i, :rows, :cols])[name]
      np.testing.assert_allclose(
        batched[i], expected, atol=2e-6, err_msg=f'{name} image {i}'
      )


@pytest.mark.parametrize('shape', [(7, 9), (9, 7), (6, 6), (2, 11), (1, 5)])
def test_rmac_regions_layout(shape):
  rng = np.random.default_rng(6)
  features = sparse_features(rng, *shape)
  regions, region_valid = jax.jit(baselines.rmac_regions)(features)
  expected = reference_rmac_regions(features)
  assert regions.shape == (50, CHANNELS) and region_valid.shape == (50,)
  np.testing.assert_allclose(
    regions[np.asarray(region_valid)], expected, atol=2e-6
  )
  np.testing.assert_array_equal(regions[~np.asarray(region_valid)], 0.0)


def test_baselines_of_empty_map_are_zero():
  features = sparse_features(np.random.default_rng(7))
  empty = np.zeros((HEIGHT, WIDTH), bool)
  for name, fn in BASELINES.items():
    np.testing.assert_array_equal(fn(features, empty), 0.0, err_msg=name)


def test_bad_inputs_raise():
  features = sparse_features(np.random.default_rng(8))
  with pytest.raises(TypeError):
    baselines.mac(features.astype(np.int32))
  with pytest.raises(ValueError):
    baselines.gem(features[None])
