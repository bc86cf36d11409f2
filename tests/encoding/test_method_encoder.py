"""Tests of regagg_jax.encoding.method_encoder: several pooling methods
from one VGG19 pass (encode_methods = pool_first, fit_sums, pool_reduced
with a MapsCache)."""

import jax
import numpy as np
import pytest

from regagg_jax.encoding import file_encoder
from regagg_jax.encoding import method_encoder
from regagg_jax.features import vgg19
from regagg_jax.storage import records
from tests.encoding.conftest import HESAFF_REGIONS
from tests.encoding.conftest import JAX_REGIONS
from tests.encoding.conftest import OPTIONS
from tests.encoding.conftest import TOLERANCE


def test_encode_methods_agrees_with_encode_rows(variables, paths, reduction):
  """The staged multi-method pass == the one-pass fused encoder, 'o2' with
  the same U^1 included."""
  stores = method_encoder.encode_methods(
    variables,
    paths[:3],
    ('o1', 'o2', 'crow'),
    options=method_encoder.PassOptions(
      OPTIONS, region_options=JAX_REGIONS, max_size=64, batch_size=4
    ),
    k_prime=4,
    reduction=reduction,
  )
  for method, store in stores.items():
    alone = file_encoder.encode_rows(
      variables,
      paths,
      range(3),
      method,
      region_options=JAX_REGIONS,
      pooling_options=OPTIONS,
      max_size=64,
      batch_size=4,
      reduction=reduction,
    )
    np.testing.assert_allclose(
      store.descriptors, alone.descriptors, **TOLERANCE
    )
    np.testing.assert_array_equal(store.valid, alone.valid)
    assert store.metadata['reduction_hash'] == alone.metadata['reduction_hash']


def test_encode_methods_takes_explicit_arguments(sample_paths):
  """No config: global methods need no region_options; M = 1, unit norm."""
  variables = vgg19.init_params(jax.random.PRNGKey(0), widths=(4, 4, 8, 8, 16))
  stores = method_encoder.encode_methods(
    variables,
    sample_paths[:3],
    ('gem', 'mac'),
    options=method_encoder.PassOptions(OPTIONS, max_size=64, batch_size=2),
    k_prime=6,
  )
  for store in stores.values():
    assert store.descriptors.shape == (3, 1, 16)
    assert store.descriptors.dtype == np.float32 and store.valid.all()
    np.testing.assert_allclose(
      np.linalg.norm(store.descriptors, axis=-1), 1, rtol=1e-5
    )
    assert store.metadata['rows'] == [0, 1, 2] and store.reduction is None
    assert store.metadata['apply_exif'] and 'config_hash' not in store.metadata
  with pytest.raises(ValueError, match='region_options'):
    method_encoder.encode_methods(
      variables,
      sample_paths[:1],
      ('o1',),
      options=method_encoder.PassOptions(OPTIONS),
      k_prime=6,
    )


def test_encode_methods_fits_the_u1_of_fit_reduction(
  variables, paths, reduction
):
  """U^1 fitted in pass 1 (fit_sums on pool_first's eq. 3 sums) equals
  file_encoder.fit_reduction's on the same images."""
  stores = method_encoder.encode_methods(
    variables,
    paths,
    ('o2',),
    options=method_encoder.PassOptions(
      OPTIONS, region_options=HESAFF_REGIONS, max_size=64, batch_size=4
    ),
    k_prime=4,
  )
  np.testing.assert_allclose(
    stores['o2'].reduction.components, reduction.components, atol=1e-5
  )
  assert stores['o2'].metadata['reduction_hash'] == records.hash_params(
    stores['o2'].reduction
  )


@pytest.mark.parametrize('cache_mib', [None, 0, 64])
def test_pool_reduced_is_the_same_from_the_cache_or_read_again(
  variables, paths, reduction, cache_mib
):
  """Pass 2 from cached maps (64 MiB), from cached regions with VGG19 run
  again (0 MiB: no maps fit) or with no cache (a resumed run: read,
  forwarded and proposed again) gives the same stores; pass 1 returns the
  eq. (3) sums and the non-reduced methods only."""
  options = method_encoder.PassOptions(
    OPTIONS, region_options=HESAFF_REGIONS, max_size=64, batch_size=4
  )
  cache = None if cache_mib is None else method_encoder.MapsCache(cache_mib)
  rows = [4, 0, 2]
  early, sums = method_encoder.pool_first(
    variables,
    paths,
    rows,
    ('o1', 'o2'),
    options=options,
    cache=cache,
    sums=True,
  )
  assert sorted(early) == ['o1'] and sums.metadata['rows'] == rows
  assert sums.descriptors.shape == (3, 4, 16)  # eq. (3): M = 2^L, K
  later = method_encoder.pool_reduced(
    variables,
    paths,
    rows,
    ('o2',),
    reduction=reduction,
    options=options,
    cache=cache,
  )
  if cache is not None:
    assert cache.batches == [] and cache.budget == cache_mib * 2**20
  alone = file_encoder.encode_rows(
    variables,
    paths,
    rows,
    'o2',
    reduction=reduction,
    pooling_options=OPTIONS,
    region_options=HESAFF_REGIONS,
    max_size=64,
    batch_size=4,
  )
  np.testing.assert_allclose(
    later['o2'].descriptors, alone.descriptors, **TOLERANCE
  )
  np.testing.assert_array_equal(later['o2'].valid, alone.valid)
  np.testing.assert_array_equal(later['o2'].masks, alone.masks)
  assert later['o2'].metadata['rows'] == rows


def test_maps_cache_keeps_maps_within_its_budget():
  """Maps are kept while they fit in the budget (regions always); take
  removes the batches whose rows all lie in `rows` and frees their bytes."""
  maps = (np.zeros((2, 64, 64), np.float32), np.zeros(2))  # 32 KiB
  cache = method_encoder.MapsCache(48 / 1024)  # 48 KiB
  masks, valid = np.ones((2, 4, 2, 2), bool), np.ones((2, 4), bool)
  cache.add([0, 1], np.ones((2, 2)), maps, masks, valid)
  cache.add([2, 3], np.ones((2, 2)), maps, masks, valid)
  assert cache.batches[0].maps is maps and cache.batches[1].maps is None
  assert cache.budget == 16 * 1024
  assert cache.take([2, 1]) == []  # no batch lies wholly in these rows
  taken = cache.take(range(3, -1, -1))
  assert [b.rows for b in taken] == [[0, 1], [2, 3]]
  assert cache.batches == [] and cache.budget == 48 * 1024
  assert taken[1].masks is masks and taken[1].valid is valid


def test_fit_sums_fits_the_store_regions_and_refuses_an_empty_store():
  rng = np.random.default_rng(4)
  descriptors = rng.normal(size=(3, 4, 6)).astype(np.float32)
  valid = rng.random((3, 4)) < 0.8
  store = records.Store(
    descriptors=descriptors,
    valid=valid,
    masks=np.zeros((3, 4, 1, 1), bool),
    grid=np.ones((3, 2), np.int32),
    image_paths=('a', 'b', 'c'),
    reduction=None,
    metadata={},
  )
  fitted = method_encoder.fit_sums(store, 2)
  x = descriptors.reshape(-1, 6).astype(np.float64)[valid.reshape(-1)]
  _, vectors = np.linalg.eigh(x.T @ x)  # eq. (4): uncentred
  top = vectors[:, ::-1][:, :2]
  np.testing.assert_allclose(
    np.abs(top.T @ np.asarray(fitted.components, np.float64)),
    np.eye(2),
    atol=1e-5,
  )
  empty = store._replace(
    descriptors=descriptors[:0], valid=valid[:0], image_paths=()
  )
  with pytest.raises(ValueError, match='no readable image'):
    method_encoder.fit_sums(empty, 2)


def test_check_methods_refuses_before_reading():
  """'o2' without U^1 is accepted (it is fitted here); unknown methods and
  regional ones without region_options are not."""
  method_encoder.check_methods(('o2', 'mac'), HESAFF_REGIONS, None)
  with pytest.raises(ValueError, match='pooling method must be one of'):
    method_encoder.check_methods(('mac', 'vlad'), HESAFF_REGIONS, None)
  with pytest.raises(ValueError, match='needs region_options'):
    method_encoder.check_methods(('o1',), None, None)


def test_pass_options_are_one_hashable_value_and_checked():
  """Both passes take one PassOptions (hashable, defaults visible); a dict
  of keywords is refused before any image is read."""
  options = method_encoder.PassOptions(OPTIONS, region_options=JAX_REGIONS)
  assert hash(options) == hash(options._replace())
  # max_size, batch_size, dtype, apply_exif, num_threads, prefetch:
  assert options[2:] == (0, 4, 'float32', True, 4, 2)
  keywords = {'pooling_options': OPTIONS, 'region_options': JAX_REGIONS}
  with pytest.raises(TypeError, match='PassOptions'):
    method_encoder.pool_first(None, ['a.jpg'], [0], ('o1',), options=keywords)
  with pytest.raises(TypeError, match='PassOptions'):
    method_encoder.pool_reduced(
      None, ['a.jpg'], [0], ('o2',), reduction=None, options=keywords
    )
