"""Revisited Oxford (Radenovic et al. 2018): 70 cropped queries, E/M/H mAP.

Images: the Oxford5k jpgs in data/roxford5k/ (or a link to data/oxford5k);
ground truth gnd_roxford5k.pkl in eval.gnd_dir. Queries are always cropped
and are not in the database; reports mAP and mP@k for Easy, Medium, Hard.

  python run.py --config=configs/roxford5k.py --mode=eval
"""

from configs import default


def get_config():
  """Returns the Revisited Oxford config."""
  config = default.get_config()
  config.name = 'roxford5k'
  config.workdir = 'outputs/roxford5k'
  config.eval.dataset = 'roxford5k'
  config.eval.root = 'data/roxford5k'
  config.search.query_regions = 'whole'
  return config
