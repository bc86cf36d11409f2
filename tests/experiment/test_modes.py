"""Tests for regagg_jax.experiment.modes: the mode table, the demo's rows,
--mode=config, the search queries spec, encode and fit on the quick config
(end-to-end eval, search and demo: tests/test_end_to_end.py)."""

import shutil

import pytest

from configs import quick
from regagg_jax.aggregation import method_table
from regagg_jax.experiment import modes
from regagg_jax.search import rerank


def test_modes_table_names_each_mode():
  assert modes.MODES == {
    'config': modes.run_config,
    'demo': modes.run_demo,
    'encode': modes.run_encode,
    'fit': modes.run_fit,
    'search': modes.run_search,
    'eval': modes.evaluate,
  }


def test_demo_rows_are_methods_and_reranks_with_distinct_labels():
  for method, regional, name in modes.DEMO_ROWS:
    assert method in method_table.POOLING and name in rerank.RERANK
    assert isinstance(regional, bool)
  labels = [modes.demo_label(*row) for row in modes.DEMO_ROWS]
  assert len(set(labels)) == len(labels)
  assert labels[0] == 'O2_R (proposed)'
  assert modes.demo_label('o2', True, 'alpha_qe') == 'O2_R + α-QE'
  assert modes.demo_label('crow', False) == 'CroW'


def test_variant_copies_the_config():
  config = quick.get_config()
  variant = modes._variant(config, 'crow', False, 'qe')
  assert (variant.pooling.method, variant.pooling.regional) == ('crow', False)
  assert variant.search.rerank == 'qe'
  assert (config.pooling.method, config.search.rerank) == ('o2', 'none')


def test_run_config_prints_every_field_resolved(capsys):
  config = quick.get_config()
  config.pca.dim = 12
  modes.run_config(config)
  out = capsys.readouterr().out
  assert 'name: quick' in out and 'dim: 12' in out
  for section in ('features', 'regions', 'pooling', 'pca', 'search', 'eval'):
    assert f'{section}:' in out


def test_search_queries_are_a_file_a_folder_or_a_list(tmp_path):
  (tmp_path / 'photos' / 'sub').mkdir(parents=True)
  for name in ('b.jpg', 'sub/a.png'):
    (tmp_path / 'photos' / name).write_bytes(b'')
  assert modes._query_paths(str(tmp_path / 'q.jpg')) == [
    str(tmp_path / 'q.jpg')
  ]
  assert modes._query_paths(str(tmp_path / 'photos')) == [
    str(tmp_path / 'photos' / 'b.jpg'),
    str(tmp_path / 'photos' / 'sub/a.png'),
  ]
  listing = tmp_path / 'queries.txt'
  listing.write_text('/x/one.jpg\n\n  /x/two.jpg  \n')
  assert modes._query_paths(str(listing)) == ['/x/one.jpg', '/x/two.jpg']


@pytest.mark.slow
def test_encode_then_fit_on_the_quick_config(tmp_path, sample_paths, capsys):
  photos = tmp_path / 'photos'
  photos.mkdir()
  for path in sample_paths[:8]:
    shutil.copy(path, photos)
  config = quick.get_config()
  config.workdir = str(tmp_path / 'work')
  config.eval.dataset = 'folder'
  config.eval.root = str(photos)
  modes.run_encode(config)
  encoded = capsys.readouterr().out
  assert encoded.startswith('8 images encoded as 8 x ')
  assert str(tmp_path / 'work' / 'stores') in encoded
  modes.run_fit(config)
  fitted = capsys.readouterr().out
  # 8 photos are too few to whiten D = 8: plain PCA, and a note says so.
  assert fitted.startswith('PCA D = 8 fitted on photos (')
  assert str(tmp_path / 'work' / 'fits') in fitted
  assert '\nnote: ' in fitted and 'too few to whiten' in fitted
  assert len(list((tmp_path / 'work' / 'stores').iterdir())) == 1
