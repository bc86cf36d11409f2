"""The README's "Using it from your code" block runs as written."""

import contextlib
import io
import os
import re

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _code_block(section):
  """The first ```python block after the README heading `section`."""
  with open(os.path.join(REPO_ROOT, 'README.md')) as stream:
    text = stream.read()
  start = text.index(f'## {section}\n')
  return re.search(r'```python\n(.*?)```', text[start:], re.S).group(1)


@pytest.mark.weights
def test_using_it_from_your_code_block_runs_and_finds_each_objects_views(
  monkeypatch,
):
  monkeypatch.chdir(REPO_ROOT)
  namespace = {}
  output = io.StringIO()
  with contextlib.redirect_stdout(output):
    exec(
      compile(_code_block('Using it from your code'), 'README.md', 'exec'),
      namespace,
    )  # pylint: disable=exec-used
  ranks = np.argsort(-np.asarray(namespace['scores_qe']), axis=1)[:, :4]
  assert str(ranks) in output.getvalue()
  for query, top in zip(namespace['queries'], ranks):
    assert top[0] == query  # eq. 7: an image matches itself best
    assert np.sum(top // 4 == query // 4) >= 3, (query, top)  # its 4 views
  assert namespace['x'].shape == (12, 8, 16)
