"""The demo (what `python run.py` runs): the 56 bundled UKBench images.

Encodes data/samples (14 objects x 4 photos, group = id // 4, 384 px) with the
real VGG19 once, pools it with every method (O2_R, O2_W, O1_R, O1_W and the
SPoC, MAC, CroW, R-MAC, GeM baselines), uses every image as a query against
all 56, prints N-S (top-4 score, max 4) and mAP, and draws fig2.png.

PCA-whitening is fitted on the 56 images themselves (as the paper fits on the
database). With so few vectors D is capped at (valid vectors) / 4 per method
(pca.min_vectors_per_dim = 4): whitening fitted on fewer vectors than a few
times D ruins mAP, so global baselines (56 vectors) get D = 14, regional
variants up to pca.dim.

  python run.py
  python run.py --config=configs/demo.py --mode=demo
"""

from configs import default


def get_config():
  """Returns the demo config."""
  config = default.get_config()
  config.name = 'demo'
  config.workdir = 'outputs/demo'
  config.pca.dim = 64
  config.pca.min_vectors_per_dim = 4
  config.eval.dataset = 'samples'
  config.eval.root = 'data/samples'
  return config
