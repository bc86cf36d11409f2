"""Files written whole: atomic writes, sealed JSON, fault injection.

  atomic_write       a file written to a temporary name, fsynced, renamed
  write_json         a JSON file, atomically
  seal               a JSON record with the sha256 of its contents
  read_json          a versioned (and sealed) JSON file of a store / fit
  replace_directory  a directory written aside, then swapped in
  KILL_AT            fault injection: SIGKILL at a chosen write (tests)

Temporaries are named <file>.tmp-<host>-<pid>-* (directories: <name>.tmp-,
<name>.old-); every write removes those of dead processes of this host in
its directory, so a killed run leaves none once the next one writes there.
"""

import collections
import fnmatch
import hashlib
import json
import os
import shutil
import signal
import socket
import tempfile
import uuid


KILL_AT = 'REGAGG_KILL_AT'
"""Fault injection for crash tests: with REGAGG_KILL_AT=<pattern>[:<n>] in
the environment, the n-th (default 1st) atomic_write / replace_directory of
this process whose file name (basename) matches the fnmatch pattern SIGKILLs
the process after its temporary is written, before the rename. Unset: one
dict lookup per write."""

_kills = collections.Counter()  # writes matching each KILL_AT pattern


def _temporary_tag(kind):
  """'<kind><host>-<pid>-': names this process's temporaries."""
  return f'{kind}{socket.gethostname()}-{os.getpid()}-'


def _remove_leftovers(directory):
  """Removes the temporaries in `directory` left by killed processes of
  this host (their pid is gone): of any file, since a rerun may write
  under another name (results never overwrite). A live writer's are kept,
  and so are other hosts' (their pids cannot be checked here)."""
  host = socket.gethostname()
  for name in os.listdir(directory):
    for kind in ('.tmp-', '.old-'):
      _, found, rest = name.partition(f'{kind}{host}-')
      pid = rest.split('-')[0]
      if not found or not pid.isdigit() or _is_running(int(pid)):
        continue
      leftover = os.path.join(directory, name)
      if os.path.isdir(leftover):
        shutil.rmtree(leftover, ignore_errors=True)
      else:
        try:
          os.remove(leftover)
        except FileNotFoundError:  # removed by another process
          pass


def _is_running(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def _kill_if_asked(file):
  """SIGKILLs this process at the write KILL_AT names (see KILL_AT)."""
  rule = os.environ.get(KILL_AT)
  if not rule:
    return
  pattern, _, count = rule.partition(':')
  if fnmatch.fnmatch(os.path.basename(file), pattern):
    _kills[pattern] += 1
    if _kills[pattern] == int(count or 1):
      os.kill(os.getpid(), signal.SIGKILL)


def atomic_write(file, write):
  """write(binary stream) to a temporary file, fsync, rename it to `file`.

  A reader never sees a partial file: a run killed at any point leaves the
  old file (or none) and at most a `<file>.tmp-<host>-<pid>-*` leftover,
  removed by the next write into the same directory once that pid is gone
  (a live writer's temporaries are kept).

  Args:
    file: destination path (its directory exists).
    write: callable writing the contents to a binary stream.
  """
  tmp = f'{file}{_temporary_tag(".tmp-")}{uuid.uuid4().hex[:8]}'
  try:
    with open(tmp, 'xb') as stream:  # mode 0666 less the umask
      write(stream)
      stream.flush()
      os.fsync(stream.fileno())
    _kill_if_asked(file)
    os.replace(tmp, file)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  directory = os.path.dirname(os.path.abspath(file))
  handle = os.open(directory, os.O_RDONLY)  # persist the rename
  os.fsync(handle)
  os.close(handle)
  _remove_leftovers(directory)


def write_json(file, value):
  """Writes a JSON-serialisable value to `file` with `atomic_write`.

  Raises:
    TypeError: value is not JSON-serialisable (nothing is written).
  """
  text = json.dumps(value, indent=1).encode()  # TypeError before any write
  atomic_write(file, lambda stream: stream.write(text))


def _json_digest(value):
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def seal(value):
  """The dict `value` with 'sha256': the digest of its canonical JSON, so
  that read_json(..., sealed=True) refuses an edited or bit-flipped copy
  that still parses."""
  return dict(value, sha256=_json_digest(value))


_RECOVER = {
  'metadata.json': 'run the same command again: the store is finalised anew '
  'from its shards',
}


def read_json(path, name, version, *, sealed=False):
  """A JSON file of a store / fit directory, refusing other versions.

  Args:
    path: the directory.
    name: the file name in it.
    version: the format_version the file must have.
    sealed: the file was written `seal`ed: check (and drop) its sha256.

  Returns:
    the parsed JSON value (a dict).

  Raises:
    FileNotFoundError: no such file (not a regagg_jax directory).
    ValueError: another format version, or a corrupt or damaged file
      (naming it and what recovers it).
  """
  file = os.path.join(path, name)
  if not os.path.isfile(file):
    raise FileNotFoundError(
      f'{path} is not a regagg_jax directory: {name} is missing'
    )
  recover = _RECOVER.get(name, f'delete {path} and run the same command again')
  try:
    with open(file) as stream:
      value = json.load(stream)
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    raise ValueError(
      f'{file} is corrupt ({type(error).__name__}: {error}); {recover}'
    ) from error
  found = value.get('format_version') if isinstance(value, dict) else None
  if found != version:
    raise ValueError(
      f'{file} has format version {found}, this code reads '
      f'version {version}; re-create it'
    )
  if sealed:
    value = dict(value)
    if value.pop('sha256', None) != _json_digest(value):
      raise ValueError(
        f'{file} does not match the sha256 it was written with (a damaged '
        f'or edited file); {recover}'
      )
  return value


def replace_directory(write, path):
  """Calls write(tmp_dir) then renames tmp_dir to path (replacing it).

  If write raises, the temporary directory is removed and a previous
  directory at path is kept.

  Args:
    write: callable filling the (new, empty) directory it is given.
    path: directory to create or replace.
  """
  path = os.path.abspath(path)
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(
    prefix=os.path.basename(path) + _temporary_tag('.tmp-'), dir=parent
  )
  try:
    write(tmp)
    _kill_if_asked(path)
    if os.path.exists(path):
      old = tempfile.mkdtemp(
        prefix=os.path.basename(path) + _temporary_tag('.old-'), dir=parent
      )
      os.replace(path, os.path.join(old, 'store'))
      os.replace(tmp, path)
      shutil.rmtree(old)
    else:
      os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  _remove_leftovers(parent)
