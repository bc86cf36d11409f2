"""Aggregation (Sec. 3): region descriptors from conv5_4 features.

pooling       first-order (eq. 3, 9), second-order (eq. 4-5)
baselines     SPoC, MAC, CroW, R-MAC, GeM (the paper's Table 1 baselines)
pca           PCA (eq. 4, U^1) and PCA-whitening (eq. 6, U^2)
method_table  the pooling.method table: per-image pooling, U^1 needs,
              PoolingOptions
"""

from regagg_jax.aggregation import baselines
from regagg_jax.aggregation import method_table
from regagg_jax.aggregation import pca
from regagg_jax.aggregation import pooling
from regagg_jax.aggregation.baselines import crow
from regagg_jax.aggregation.baselines import gem
from regagg_jax.aggregation.baselines import mac
from regagg_jax.aggregation.baselines import rmac
from regagg_jax.aggregation.baselines import spoc
from regagg_jax.aggregation.method_table import POOLING
from regagg_jax.aggregation.method_table import PoolingOptions
from regagg_jax.aggregation.pca import PCAParams
from regagg_jax.aggregation.pooling import compute_log_covariances
from regagg_jax.aggregation.pooling import compute_region_weights
from regagg_jax.aggregation.pooling import first_order
from regagg_jax.aggregation.pooling import second_order
