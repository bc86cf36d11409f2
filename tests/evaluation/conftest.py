"""Shared set-up of the evaluation tests."""

import pytest


@pytest.fixture
def touch():
  """touch(root, names): creates empty files root/name (and their folders)."""

  def create(root, names):
    for name in names:
      (root / name).parent.mkdir(parents=True, exist_ok=True)
      (root / name).write_bytes(b'')

  return create
