"""Fig. 1, O2_R: second-order pooling (eq. 4-5), all 2^L regions.

One command per cell (dataset column x D); "oxford5k_full" is the "OF"
column (uncropped queries). Results go to
outputs/<dataset>/results/O2_R[+qe]-<dataset>-<D>.json.

A trailing ',qe' adds query expansion (eq. 8; not for Holidays).

  python run.py --config=configs/fig1_o2_r.py:oxford5k,128 --mode=eval
  python run.py --config=configs/fig1_o2_r.py:oxford5k,256 --mode=eval
  python run.py --config=configs/fig1_o2_r.py:oxford5k,512 --mode=eval
  python run.py --config=configs/fig1_o2_r.py:oxford5k_full,128 --mode=eval
  python run.py --config=configs/fig1_o2_r.py:oxford5k_full,256 --mode=eval
  python run.py --config=configs/fig1_o2_r.py:oxford5k_full,512 --mode=eval
  python run.py --config=configs/fig1_o2_r.py:paris6k,128 --mode=eval
  python run.py --config=configs/fig1_o2_r.py:paris6k,256 --mode=eval
  python run.py --config=configs/fig1_o2_r.py:paris6k,512 --mode=eval
  python run.py --config=configs/fig1_o2_r.py:holidays,128 --mode=eval
  python run.py --config=configs/fig1_o2_r.py:holidays,256 --mode=eval
  python run.py --config=configs/fig1_o2_r.py:holidays,512 --mode=eval
  python run.py --config=configs/fig1_o2_r.py:oxford5k,128,qe --mode=eval
  python run.py --config=configs/fig1_o2_r.py:oxford5k,256,qe --mode=eval
  python run.py --config=configs/fig1_o2_r.py:oxford5k,512,qe --mode=eval
  python run.py --config=configs/fig1_o2_r.py:oxford5k_full,128,qe --mode=eval
  python run.py --config=configs/fig1_o2_r.py:oxford5k_full,256,qe --mode=eval
  python run.py --config=configs/fig1_o2_r.py:oxford5k_full,512,qe --mode=eval
  python run.py --config=configs/fig1_o2_r.py:paris6k,128,qe --mode=eval
  python run.py --config=configs/fig1_o2_r.py:paris6k,256,qe --mode=eval
  python run.py --config=configs/fig1_o2_r.py:paris6k,512,qe --mode=eval
"""

from configs import paper


def get_config(arg='oxford5k,512'):
  """Returns the config of one cell; arg is '<dataset>,<D>[,qe]'."""
  return paper.make_config(arg, variant='O2_R', qe=False)
