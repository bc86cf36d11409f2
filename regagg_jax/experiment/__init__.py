"""Experiment: the only code that reads a config (ml_collections.ConfigDict).

settings   a config's hashes, encoder options and checks of stores and fits
pipeline   encode as a config says: one method, or several from one pass
fitting    fit as a config says: U^1 (eq. 4), PCA-whitening (eq. 6)
retrieval  search as a config says: exact eq. 7 or region index + re-rank
indexing   the region index and diffusion's region graph a config asks for
stores     a dataset's stores in the workdir: encoded once, one writer
workspace  a dataset's database store, fits and queries
searches   a run's region index and graph kept in the workdir, its rankings
modes      what run.py --mode runs: demo / encode / fit / search / eval / config
reporting  results tables, method names and results files of the modes
cli        run.py and the regagg-jax console script (absl flags, so not
           imported here)
"""

from regagg_jax.experiment import modes
from regagg_jax.experiment import reporting
from regagg_jax.experiment.modes import MODES
