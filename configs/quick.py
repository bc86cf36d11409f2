"""Quick configuration for tests and debugging: tiny random VGG, tiny images.

A 5-block VGG19 with widths (4, 4, 8, 8, 16) and random weights, images
capped at 96 px, 60 salient points at most, K' = 6, D = 8: every stage runs,
in seconds on a CPU. Scores are meaningless.

  python run.py --config=configs/quick.py --mode=eval
"""

from configs import default


def get_config():
  """Returns the default config shrunk for speed."""
  config = default.get_config()
  config.name = 'quick'
  config.workdir = 'outputs/quick'
  config.features.weights = 'random'
  config.features.widths = (4, 4, 8, 8, 16)
  config.features.max_size = 96
  config.features.batch_size = 4
  config.regions.n_max = 60
  config.regions.n_min = 20
  config.pooling.k_prime = 6
  config.pca.dim = 8
  config.search.n_qe = 2
  config.search.top_k = 5
  config.eval.figure_queries = 2
  config.eval.figure_results = 3
  return config
