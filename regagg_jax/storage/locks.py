"""One writer per store: an OS file lock.

  hold   a context holding an exclusive lock file; a second run waits for
         it, with one log line naming the lock file and its holder

The lock is fcntl.flock on a file outside the guarded directory (so it
survives the directory being removed and made anew: experiment.stores
keeps <workdir>/locks/<store>.lock); the file is kept after release, since
removing a lock file races with its next taker. The
kernel drops it when its holder dies, SIGKILL included, so a killed run
never leaves a store locked. flock is per host: on a network file system
runs on different hosts may not see each other's locks. A multi-process
run (--num_processes) takes it in process 0 only, for all its processes
(experiment.stores): they write disjoint shards of one store.
"""

import contextlib
import fcntl
import os
import socket

from absl import logging


@contextlib.contextmanager
def hold(lock):
  """Holds the exclusive lock `lock` while the block runs, waiting first
  while another process holds it.

  Args:
    lock: the lock file (made, with its folder, if needed).

  Yields:
    the lock file's path.
  """
  lock = os.fspath(lock)
  os.makedirs(os.path.dirname(os.path.abspath(lock)), exist_ok=True)
  with open(lock, 'a+') as stream:
    try:
      fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      stream.seek(0)
      holder = stream.read().strip() or 'another process'
      logging.warning(
        'waiting for %s (held by %s): another run writes this store',
        lock,
        holder,
      )
      fcntl.flock(stream, fcntl.LOCK_EX)
    stream.truncate(0)
    stream.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
    stream.flush()
    try:
      yield lock
    finally:
      fcntl.flock(stream, fcntl.LOCK_UN)
