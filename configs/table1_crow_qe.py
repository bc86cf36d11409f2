"""Table 1, "CroW + QE" [5]: average query expansion (query + top N_QE = 10).

One command per cell (dataset column x D); "oxford5k_full" is the "OF"
column (uncropped queries). Results go to
outputs/<dataset>/results/crow+qe-<dataset>-<D>.json.

  python run.py --config=configs/table1_crow_qe.py:oxford5k,128 --mode=eval
  python run.py --config=configs/table1_crow_qe.py:oxford5k,256 --mode=eval
  python run.py --config=configs/table1_crow_qe.py:oxford5k,512 --mode=eval
  python run.py --config=configs/table1_crow_qe.py:oxford5k_full,128 --mode=eval
  python run.py --config=configs/table1_crow_qe.py:oxford5k_full,256 --mode=eval
  python run.py --config=configs/table1_crow_qe.py:oxford5k_full,512 --mode=eval
  python run.py --config=configs/table1_crow_qe.py:paris6k,128 --mode=eval
  python run.py --config=configs/table1_crow_qe.py:paris6k,256 --mode=eval
  python run.py --config=configs/table1_crow_qe.py:paris6k,512 --mode=eval
"""

from configs import paper


def get_config(arg='oxford5k,512'):
  """Returns the config of one cell; arg is '<dataset>,<D>'."""
  config = paper.make_config(arg, variant='crow', qe=True)
  config.search.qe_include_query = True  # average QE [19]: query + top 10
  return config
