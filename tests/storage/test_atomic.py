"""Tests for regagg_jax.storage.atomic: temporaries of dead writers are
removed and live ones kept; sealed JSON refuses edits (the kill at each
write point: tests/test_kill_points.py)."""

import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest

from regagg_jax.storage import atomic


def test_dead_writers_temporaries_are_removed_live_ones_kept(tmp_path):
  """A write into a directory removes the temporaries of any file there
  left by dead processes of this host (a rerun may write another name);
  a live pid's and another host's are kept."""
  child = subprocess.Popen([sys.executable, '-c', 'pass'])
  child.wait()  # its pid is now gone
  host = socket.gethostname()
  dead = [
    f'results.json.tmp-{host}-{child.pid}-abcd',
    f'x.npz.tmp-{host}-{child.pid}-ef01',
  ]
  kept = [
    f'x.json.tmp-{host}-{os.getpid()}-abcd',  # a live writer
    f'x.json.tmp-other-host-{child.pid}-abcd',
  ]
  for name in dead + kept:
    (tmp_path / name).write_bytes(b'half')
  (tmp_path / f'fit.old-{host}-{child.pid}-zz').mkdir()  # replace_directory's
  dead.append(f'fit.old-{host}-{child.pid}-zz')
  atomic.write_json(str(tmp_path / 'y.json'), {'a': 1})
  assert sorted(os.listdir(tmp_path)) == sorted(kept + ['y.json'])
  atomic.replace_directory(lambda d: None, str(tmp_path / 'sub' / 'd'))
  (tmp_path / 'sub' / f'e.tmp-{host}-{child.pid}-q').mkdir()
  atomic.replace_directory(lambda d: None, str(tmp_path / 'sub' / 'd'))
  assert os.listdir(tmp_path / 'sub') == ['d']


def test_sealed_json_refuses_edits_that_still_parse(tmp_path):
  value = {'format_version': 1, 'paths': ['a.jpg', 'b.jpg'], 'n': 2}
  atomic.write_json(str(tmp_path / 'x.json'), atomic.seal(value))
  written = json.loads((tmp_path / 'x.json').read_text())
  canonical = json.dumps(value, sort_keys=True).encode()
  assert written['sha256'] == hashlib.sha256(canonical).hexdigest()
  assert atomic.read_json(str(tmp_path), 'x.json', 1, sealed=True) == value
  for edit in ({'n': 3}, {'paths': ['a.jpg', 'c.jpg']}, {'sha256': None}):
    (tmp_path / 'x.json').write_text(json.dumps(dict(written, **edit)))
    assert atomic.read_json(str(tmp_path), 'x.json', 1)  # unsealed: read
    with pytest.raises(
      ValueError,
      match=r'x.json does not match the sha256 it was written with .*delete '
      '.* run the same command again',
    ):
      atomic.read_json(str(tmp_path), 'x.json', 1, sealed=True)
