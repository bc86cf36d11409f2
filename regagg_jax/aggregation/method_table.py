"""The pooling methods a config names, as the encoder calls them per image.

  PoolingOptions  the static options every pool function takes
  Method          a per-image pooling function and what it needs
  POOLING         pooling.method -> Method (eq. 3-5, 9 or a baseline)
  SUM             eq. (3): the descriptors U^1 of eq. (4) is fitted on
  check_method    POOLING[method], refusing missing options or U^1

Every pool function has the signature of `Method.pool`; `batch_encoder`
vmaps it over a batch inside its jit, with the PoolingOptions as a static
argument.
"""

from typing import Callable, NamedTuple

from regagg_jax.aggregation import baselines
from regagg_jax.aggregation import pooling


class PoolingOptions(NamedTuple):
  """Static options of the pooling methods; hashable, so the jits take them
  as a static argument. Defaults are configs/default.py's.

  Attributes:
    gem_power: p of the GeM baseline.
    offdiag_scale: factor on vec()'s off-diagonal entries in eq. (5) (1: the
      paper).
    log_method: eigen-solver of the matrix logarithm of eq. (5), one of
      pooling.LOG_METHODS ('qr' | 'eigh').
    rmac_levels: scales of the R-MAC baseline's grid.
  """

  gem_power: float = 3.0
  offdiag_scale: float = 1.0
  log_method: str = 'qr'
  rmac_levels: int = 3


class Method(NamedTuple):
  """A pooling method: pool(features, alpha, beta, cells, masks, region_valid,
  reduction, options: PoolingOptions) -> float32 (M, D_store) for one image
  (vmapped).

  Attributes:
    pool: the per-image pooling function.
    regional: pools the 2^L proposed regions (else the whole image, M = 1).
    reduced: needs U^1 of eq. (4).
  """

  pool: Callable
  regional: bool
  reduced: bool


def _pool_sum(
  features, alpha, beta, cells, masks, region_valid, reduction, options
):
  del alpha, reduction, options
  return pooling.first_order(
    features,
    masks,
    beta,
    valid=cells,  # eq. (3)
    region_valid=region_valid,
  )


def _pool_first_order(
  features, alpha, beta, cells, masks, region_valid, reduction, options
):
  del reduction, options
  return pooling.first_order(
    features,
    masks,
    beta,
    alpha,  # eq. (9)
    valid=cells,
    region_valid=region_valid,
  )


def _pool_second_order(
  features, alpha, beta, cells, masks, region_valid, reduction, options
):
  return pooling.second_order(  # eq. (4-5)
    features,
    masks,
    alpha,
    beta,
    reduction,
    valid=cells,
    region_valid=region_valid,
    offdiag_scale=options.offdiag_scale,
    log_method=options.log_method,
  )


def _baseline(function, **option_names):
  """Wraps a global baseline (features, valid) -> (K,) as a 1-region Method;
  option_names maps its keywords to PoolingOptions fields."""

  def pool(
    features, alpha, beta, cells, masks, region_valid, reduction, options
  ):
    del alpha, beta, masks, region_valid, reduction
    kwargs = {arg: getattr(options, name) for arg, name in option_names.items()}
    return function(features, cells, **kwargs)[None]

  return pool


POOLING = {
  'o2': Method(_pool_second_order, regional=True, reduced=True),
  'o1': Method(_pool_first_order, regional=True, reduced=False),
  'spoc': Method(_baseline(baselines.spoc), regional=False, reduced=False),
  'mac': Method(_baseline(baselines.mac), regional=False, reduced=False),
  'crow': Method(_baseline(baselines.crow), regional=False, reduced=False),
  'rmac': Method(
    _baseline(baselines.rmac, levels='rmac_levels'),
    regional=False,
    reduced=False,
  ),
  'gem': Method(
    _baseline(baselines.gem, power='gem_power'), regional=False, reduced=False
  ),
}
"""pooling.method -> Method."""

SUM = Method(_pool_sum, regional=True, reduced=False)  # U^1's training set
"""Eq. (3), beta-weighted sums over each region: what U^1 of eq. (4) is
fitted on (file_encoder.fit_reduction); not a pooling.method choice."""


def check_method(method, region_options, reduction, *, fitted_here=False):
  """POOLING[method], if its region_options and U^1 are given.

  Args:
    method: POOLING key.
    region_options: proposal.RegionOptions, or None.
    reduction: U^1 PCAParams of eq. (4), or None.
    fitted_here: the caller fits U^1 itself: a missing reduction is fine.

  Returns:
    the Method.

  Raises:
    ValueError: unknown method, a regional one without region_options, or
      a reduced one without U^1 (unless fitted_here).
  """
  if method not in POOLING:
    raise ValueError(
      f'pooling method must be one of {sorted(POOLING)}, got {method!r}'
    )
  if POOLING[method].regional and region_options is None:
    raise ValueError(f'regional method {method!r} needs region_options')
  if POOLING[method].reduced and reduction is None and not fitted_here:
    raise ValueError(
      f'method {method!r} needs reduction (U^1 of eq. 4, see fit_reduction)'
    )
  return POOLING[method]
