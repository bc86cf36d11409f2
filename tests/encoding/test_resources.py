"""Bounded memory over long runs (issue 16): compiled code per bucket, not per
image; memory maps released before they run out; a failed allocation or
compilation is a clear error naming the stage, the images done and the
settings to change."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regagg_jax.aggregation import method_table
from regagg_jax.encoding import batch_encoder
from regagg_jax.encoding import file_encoder
from regagg_jax.encoding import method_encoder
from regagg_jax.encoding import resources
from regagg_jax.features import images
from regagg_jax.features import reading
from regagg_jax.features import vgg19
from regagg_jax.regions import proposal

_HESAFF = proposal.RegionOptions(
  backend='hesaff', n_max=40, n_min=20, num_clusters=2, min_cells=1
)
_OPTIONS = method_table.PoolingOptions()


@pytest.fixture(scope='module')
def variables():
  return vgg19.init_params(jax.random.PRNGKey(0), widths=(4, 4, 8, 8, 8))


def _compiled(name):
  """A list that collects the XLA compilations of jitted `name`."""
  compiled = []

  def listen(event, duration, **kwargs):
    del duration
    if event == '/jax/core/compile/backend_compile_duration' and (
      f'({name})' in str(kwargs.get('fun_name'))
    ):
      compiled.append(kwargs.get('fun_name'))

  jax.monitoring.register_event_duration_secs_listener(listen)
  return compiled, listen


def test_hesaff_batch_compiles_per_bucket_and_equals_each_image(sample_paths):
  """Images of three sizes in one 128 x 128 bucket: the padded hesaff
  proposal compiles its selection once (it compiled per image size) and
  gives each image's regions as `propose` on the unpadded image does,
  with nothing outside the image; n_min = 20 of 40 also takes the
  fall-back (few points) on the flat crop."""
  picture = reading.load(str(sample_paths[0]), max_size=128)  # 96 x 128
  pictures = [
    picture,
    picture[:90, :120],
    np.full((100, 110, 3), 128, np.uint8),
  ]
  batch = reading.make_batch([0, 1, 2], pictures, 4)
  rng = np.random.default_rng(0)
  alpha = (rng.random(batch.cells.shape) * batch.cells).astype(np.float32)
  compiled, listen = _compiled('_regions_from_points')
  try:
    masks, valid = proposal.propose_batch(
      batch.rgb, alpha, batch.cells, batch.sizes, options=_HESAFF
    )
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert len(compiled) <= 2, compiled  # one per hesaff point-count padding
  for slot, image in enumerate(pictures):
    height, width = images.feature_shape(*image.shape[:2])
    alone = proposal.propose(
      image, alpha[slot, :height, :width], options=_HESAFF
    )
    np.testing.assert_array_equal(masks[slot, :, :height, :width], alone[0])
    np.testing.assert_array_equal(valid[slot], alone[1])
    assert not masks[slot, :, height:].any()
    assert not masks[slot, :, :, width:].any()
  assert not valid[3].any() and not masks[3].any()  # the padding image


def test_release_compiled_clears_the_jit_caches_when_maps_crowd(monkeypatch):
  traces = []

  @jax.jit
  def double(x):
    traces.append(1)
    return 2 * x

  double(jnp.ones(3))
  monkeypatch.setattr(resources, 'memory_maps', lambda: (100, 1000))
  assert not resources.release_compiled(fraction=0.5)
  double(jnp.ones(3))
  assert len(traces) == 1  # still compiled
  crowded = iter([(600, 1000), (200, 1000)])
  monkeypatch.setattr(resources, 'memory_maps', lambda: next(crowded))
  assert resources.release_compiled(fraction=0.5)
  double(jnp.ones(3))
  assert len(traces) == 2  # compiled again


def test_still_crowded_after_release_is_a_clear_error(monkeypatch):
  monkeypatch.setattr(resources, 'memory_maps', lambda: (950, 1000))
  with pytest.raises(resources.ResourceError) as error:
    resources.release_compiled(done=12, what='encoding (o2)')
  message = str(error.value)
  assert 'encoding (o2) stopped after 12 images' in message
  assert '950 memory maps of vm.max_map_count 1000' in message
  assert 'features.batch_size' in message and 'max_map_count' in message


def _fail_on_call(monkeypatch, module, name, call, error):
  """Makes module.name raise `error` on its `call`-th call."""
  original, calls = getattr(module, name), []

  def failing(*args, **kwargs):
    calls.append(1)
    if len(calls) == call:
      raise error
    return original(*args, **kwargs)

  monkeypatch.setattr(module, name, failing)


@pytest.mark.parametrize(
  'error',
  [
    jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory'),
    MemoryError('Unable to allocate 8.0 GiB'),
  ],
)
def test_failed_allocation_in_encode_methods_names_stage_count_setting(
  variables, sample_paths, monkeypatch, error
):
  """An injected allocation failure in the third forward (8 images read in
  batches of 2 of one bucket: 4 done) stops the run with a ResourceError,
  not a crash."""
  _fail_on_call(monkeypatch, batch_encoder, 'staged_forward', 3, error)
  with pytest.raises(resources.ResourceError) as raised:
    method_encoder.encode_methods(
      variables,
      [str(p) for p in sample_paths[:8]],
      ('mac', 'spoc'),
      options=method_encoder.PassOptions(_OPTIONS, max_size=64, batch_size=2),
      k_prime=4,
    )
  message = str(raised.value)
  assert message.startswith('encoding (mac, spoc) failed after 4 of 8 images')
  assert 'features.batch_size (2)' in message
  assert 'features.max_size (64)' in message
  assert raised.value.__cause__ is error


def test_failed_compilation_in_encode_rows_is_a_clear_error(
  variables, sample_paths, monkeypatch
):
  error = jax.errors.JaxRuntimeError(
    'INTERNAL: LLVM compilation error: Cannot allocate memory'
  )
  _fail_on_call(monkeypatch, batch_encoder, 'run_batch', 2, error)
  with pytest.raises(resources.ResourceError, match='after 2 of 6 images'):
    file_encoder.encode_rows(
      variables,
      [str(p) for p in sample_paths[:6]],
      range(6),
      'gem',
      region_options=None,
      pooling_options=_OPTIONS,
      max_size=64,
      batch_size=2,
    )


def test_other_runtime_errors_pass_through(
  variables, sample_paths, monkeypatch
):
  error = jax.errors.JaxRuntimeError('INVALID_ARGUMENT: a real bug')
  _fail_on_call(monkeypatch, batch_encoder, 'staged_forward', 1, error)
  with pytest.raises(jax.errors.JaxRuntimeError, match='a real bug'):
    method_encoder.encode_methods(
      variables,
      [str(p) for p in sample_paths[:2]],
      ('mac',),
      options=method_encoder.PassOptions(_OPTIONS, max_size=64, batch_size=2),
      k_prime=4,
    )


def test_probes_read_this_process():
  maps = resources.memory_maps()
  if maps is None:
    pytest.skip('no /proc (not Linux)')
  assert 0 < maps[0] < maps[1]
  assert resources.resident_mib() > 10


@pytest.mark.slow
def test_memory_maps_stay_flat_over_new_image_sizes(
  variables, sample_paths, tmp_path
):
  """40 photos of 40 sizes in one 128 x 128 bucket, encoded in two halves
  with hesaff: the second half compiles nothing and adds no memory maps
  (the selection compiled once per image size, ~460 maps each, before
  issue 16)."""
  rng = np.random.default_rng(0)
  paths, sizes = [], set()
  source = reading.load(str(sample_paths[0]))
  while len(paths) < 40:
    size = (int(rng.integers(65, 129)), int(rng.integers(65, 129)))
    if size in sizes:
      continue
    sizes.add(size)
    picture = cv2.resize(source, size[::-1], interpolation=cv2.INTER_AREA)
    paths.append(str(tmp_path / f'{len(paths)}.png'))
    cv2.imwrite(paths[-1], picture[:, :, ::-1])
  options = dict(region_options=_HESAFF, pooling_options=_OPTIONS, batch_size=2)
  file_encoder.encode_rows(variables, paths, range(20), 'o1', **options)
  before = resources.memory_maps()
  compiled, listen = _compiled('_regions_from_points')
  try:
    file_encoder.encode_rows(variables, paths, range(20, 40), 'o1', **options)
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert {images.bucket_shape(*s) for s in sizes} == {(128, 128)}
  assert compiled == []
  if before is not None:
    assert resources.memory_maps()[0] - before[0] < 100


def test_counted_jit_counts_one_compilation_per_cache_miss():
  """The same shape and static options again: no new count; a new shape or
  static option: one more."""

  def scaled(x, *, scale):
    return x * scale

  jitted = resources.counted_jit(scaled, static_argnames=('scale',))
  start = resources.compilations()
  np.testing.assert_array_equal(jitted(jnp.ones(3), scale=2.0), [2, 2, 2])
  jitted(jnp.zeros(3), scale=2.0)
  assert resources.compilations() - start == 1
  jitted(jnp.ones(4), scale=2.0)
  jitted(jnp.ones(4), scale=3.0)
  assert resources.compilations() - start == 3
