"""Tests for regagg_jax.storage.locks: one holder at a time, waiters say
which lock they wait for, a killed holder frees it."""

import os
import signal
import subprocess
import sys
import threading

from absl import logging

from regagg_jax.storage import locks

REPO_ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


def _holder(lock):
  """A child process holding `lock` until its stdin closes."""
  child = subprocess.Popen(
    [
      sys.executable,
      '-c',
      'import sys; from regagg_jax.storage import locks\n'
      'with locks.hold(sys.argv[1]):\n'
      '  print("held", flush=True); sys.stdin.read()',
      str(lock),
    ],
    cwd=REPO_ROOT,
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
  )
  assert child.stdout.readline() == 'held\n'
  return child


def test_a_second_holder_waits_naming_the_lock(tmp_path, caplog):
  lock = tmp_path / 'locks' / 'store.lock'
  child = _holder(lock)
  assert f'pid {child.pid} on ' in lock.read_text()
  acquired = threading.Event()

  def take():
    with locks.hold(lock):
      acquired.set()

  with caplog.at_level(logging.WARNING):
    waiter = threading.Thread(target=take)
    waiter.start()
    assert not acquired.wait(2)  # held by the child
    child.stdin.close()  # the child leaves its block
    assert child.wait(timeout=60) == 0
    waiter.join(timeout=60)
  assert acquired.is_set()
  assert f'waiting for {lock} (held by pid {child.pid} on ' in caplog.text
  assert f'pid {os.getpid()} on ' in lock.read_text()  # the last holder


def test_a_killed_holder_frees_the_lock(tmp_path, caplog):
  lock = tmp_path / 'store.lock'
  child = _holder(lock)
  child.send_signal(signal.SIGKILL)
  child.wait()
  with caplog.at_level(logging.WARNING):
    with locks.hold(lock) as held:
      assert held == str(lock)
  assert 'waiting for' not in caplog.text
