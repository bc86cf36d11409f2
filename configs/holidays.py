"""INRIA Holidays (Jegou et al. 2008): 1,491 images, 500 queries.

Images go in data/holidays/ (jpg1.tar.gz and jpg2.tar.gz from
https://lear.inrialpes.fr/~jegou/data.php); the longer side is resized to
1024 px and each query is dropped from its own ranking. The paper used the
manually rotated set ('rotated', default; ~0.04 mAP better than 'original'),
which is not distributed: put your rotated copy in data/holidays_rotated/ or
give a rotation file ('name degrees' lines) with --config.eval.rotation_file.
No query expansion (paper, Sec. 5).

  python run.py --config=configs/holidays.py --mode=eval
  python run.py --config=configs/holidays.py:original --mode=eval
"""

from configs import default

VARIANTS = {'rotated': 'data/holidays_rotated', 'original': 'data/holidays'}
"""Image set -> image folder."""


def get_config(variant='rotated'):
  """Returns the Holidays config; variant is a VARIANTS key."""
  if variant not in VARIANTS:
    raise ValueError(
      f'variant must be one of {sorted(VARIANTS)}, got {variant!r}'
    )
  config = default.get_config()
  config.name = f'holidays_{variant}'
  config.workdir = f'outputs/holidays_{variant}'
  config.features.max_size = 1024
  config.eval.dataset = 'holidays'
  config.eval.root = VARIANTS[variant]
  return config
