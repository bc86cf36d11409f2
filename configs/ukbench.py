"""UKBench (Nister and Stewenius 2006): 10,200 images, 2,550 objects x 4.

Images go in data/ukbench/ (ukbench00000.jpg ...); group = id // 4; every
image is a query against all of them. Reports the N-S score (relevant images
in the top 4, max 4) and mAP.

  python run.py --config=configs/ukbench.py --mode=eval
"""

from configs import default


def get_config():
  """Returns the UKBench config."""
  config = default.get_config()
  config.name = 'ukbench'
  config.workdir = 'outputs/ukbench'
  config.eval.dataset = 'ukbench'
  config.eval.root = 'data/ukbench'
  return config
