"""Paris6k (Philbin et al. 2008): 6,412 images (20 corrupt), 55 queries.

Images go in data/paris6k/ (paris_1.tgz and paris_2.tgz from
https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/), original size;
queries cropped to their box and described by R_M only (paper, Sec. 5).

  python run.py --config=configs/paris6k.py --mode=eval
"""

from configs import default


def get_config():
  """Returns the Paris6k config."""
  config = default.get_config()
  config.name = 'paris6k'
  config.workdir = 'outputs/paris6k'
  config.eval.dataset = 'paris6k'
  config.eval.root = 'data/paris6k'
  config.search.query_regions = 'whole'
  return config
