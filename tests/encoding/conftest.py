"""Shared by the encoder tests: a tiny random VGG19, five sample images,
the pooling and region options, and U^1 fitted on them.

The region options (max_points=256, small N_max / N_min, L = 2) are these
modules' own, so no jit cache entry is shared with other test folders; the
batches (images of 64 x 48 px, padded to 64 x 64) compile once a process.
"""

import jax
import pytest

from regagg_jax.aggregation import method_table
from regagg_jax.encoding import file_encoder
from regagg_jax.features import vgg19
from regagg_jax.regions import proposal

OPTIONS = method_table.PoolingOptions(
  gem_power=3.0, offdiag_scale=1.0, log_method='qr', rmac_levels=3
)


JAX_REGIONS = proposal.RegionOptions(
  backend='jax', n_max=48, n_min=12, num_clusters=2, max_points=256
)


HESAFF_REGIONS = JAX_REGIONS._replace(backend='hesaff')


WIDTHS = (4, 8, 8, 16, 16)


TOLERANCE = {'rtol': 1e-5, 'atol': 1e-6}  # float32, fused vs staged XLA


@pytest.fixture(scope='module')
def variables():
  return vgg19.init_params(jax.random.PRNGKey(0), widths=WIDTHS)


@pytest.fixture(scope='module')
def paths(sample_paths):
  return [str(p) for p in sample_paths[:5]]


@pytest.fixture(scope='module')
def reduction(variables, paths):
  return file_encoder.fit_reduction(
    variables,
    paths,
    range(5),
    k_prime=4,
    region_options=HESAFF_REGIONS,
    max_size=64,
    batch_size=4,
  )
