"""Table 1, "Proposed + QE": O2_R with regional QE (eq. 8, N_QE = 10).

One command per cell (dataset column x D); "oxford5k_full" is the "OF"
column (uncropped queries). Results go to
outputs/<dataset>/results/O2_R+qe-<dataset>-<D>.json.

  python run.py --config=configs/table1_proposed_qe.py:oxford5k,128 --mode=eval
  python run.py --config=configs/table1_proposed_qe.py:oxford5k,256 --mode=eval
  python run.py --config=configs/table1_proposed_qe.py:oxford5k,512 --mode=eval
  python run.py --config=configs/table1_proposed_qe.py:oxford5k_full,128 --mode=eval
  python run.py --config=configs/table1_proposed_qe.py:oxford5k_full,256 --mode=eval
  python run.py --config=configs/table1_proposed_qe.py:oxford5k_full,512 --mode=eval
  python run.py --config=configs/table1_proposed_qe.py:paris6k,128 --mode=eval
  python run.py --config=configs/table1_proposed_qe.py:paris6k,256 --mode=eval
  python run.py --config=configs/table1_proposed_qe.py:paris6k,512 --mode=eval
"""

from configs import paper


def get_config(arg='oxford5k,512'):
  """Returns the config of one cell; arg is '<dataset>,<D>'."""
  return paper.make_config(arg, variant='O2_R', qe=True)
