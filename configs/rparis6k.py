"""Revisited Paris (Radenovic et al. 2018): 70 cropped queries, E/M/H mAP.

Images: the Paris6k jpgs in data/rparis6k/ (or a link to data/paris6k);
ground truth gnd_rparis6k.pkl in eval.gnd_dir.

  python run.py --config=configs/rparis6k.py --mode=eval
"""

from configs import default


def get_config():
  """Returns the Revisited Paris config."""
  config = default.get_config()
  config.name = 'rparis6k'
  config.workdir = 'outputs/rparis6k'
  config.eval.dataset = 'rparis6k'
  config.eval.root = 'data/rparis6k'
  config.search.query_regions = 'whole'
  return config
