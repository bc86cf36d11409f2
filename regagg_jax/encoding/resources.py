"""The encoder's process resources: memory maps, compiled code, clear errors.

  memory_maps          lines of /proc/self/maps and vm.max_map_count
  resident_mib         VmRSS of this process, MiB
  release_compiled     drops jax's compiled executables when the maps crowd
  ResourceError        a failed compilation or allocation, said plainly
  stage                names the stage and image count of such a failure
  counted_jit          jax.jit that counts its compilations
  compilations         how often the counted jits were compiled

Each XLA CPU executable keeps its JIT code in fresh memory mappings: the
JAX Hessian-affine detector of one batch shape takes ~1,100 of them, VGG19
~70, a pooling ~12 (benchmarks/memory_growth.py). A long run meets new
shape buckets (and, before issue 16, hesaff compiled once per image size),
so the mappings grow until LLVM's mmap fails at vm.max_map_count (65530 by
default): 'LLVM compilation error: Cannot allocate memory', then a
segfault. The encoder therefore calls `release_compiled` before each batch:
past `fraction` of the limit, jax's caches are cleared (the executables are
compiled again when a bucket comes back), and a process still crowded after
that stops with a ResourceError instead of crashing. Nothing here reads a
config.
"""

import collections
import contextlib
import functools
import gc

from absl import logging
import jax

MAX_MAP_COUNT = '/proc/sys/vm/max_map_count'
"""The kernel's per-process limit on memory mappings."""


class ResourceError(RuntimeError):
  """Compilation or allocation failed: memory or memory maps ran out."""


def memory_maps():
  """(mappings of this process, vm.max_map_count), or None off Linux."""
  try:
    with open('/proc/self/maps', 'rb') as stream:
      count = sum(1 for _ in stream)
    with open(MAX_MAP_COUNT) as stream:
      return count, int(stream.read())
  except (OSError, ValueError):
    return None


def resident_mib():
  """VmRSS of this process in MiB, or 0.0 off Linux."""
  try:
    with open('/proc/self/status') as stream:
      for line in stream:
        if line.startswith('VmRSS:'):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return 0.0


def _describe():
  maps = memory_maps()
  where = f'RSS {resident_mib():.0f} MiB'
  if maps:
    where += f', {maps[0]} memory maps of vm.max_map_count {maps[1]}'
  return where


def release_compiled(*, fraction=0.5, limit=0.9, done=0, what='encoding'):
  """Clears jax's compiled executables when memory maps pass a fraction.

  Args:
    fraction: clear when the mappings exceed fraction * vm.max_map_count.
    limit: after clearing, a process still above limit * vm.max_map_count
      stops (its live arrays hold the mappings).
    done: images encoded so far, for the messages.
    what: the stage, for the messages.

  Returns:
    True when the caches were cleared.

  Raises:
    ResourceError: still crowded after clearing.
  """
  maps = memory_maps()
  if maps is None or maps[0] <= fraction * maps[1]:
    return False
  jax.clear_caches()  # compiled again on the next batch of a shape
  gc.collect()
  after = memory_maps()
  logging.info(
    '%s: %d memory maps of vm.max_map_count %d after %d images; cleared '
    "jax's compiled executables: %d left",
    what,
    maps[0],
    maps[1],
    done,
    after[0],
  )
  if after[0] > limit * after[1]:
    raise ResourceError(
      f'{what} stopped after {done} images: {_describe()} even without '
      'compiled code; lower features.batch_size or features.cache_mib, or '
      f'raise {MAX_MAP_COUNT}'
    )
  return True


_EXHAUSTED = ('RESOURCE_EXHAUSTED', 'Cannot allocate memory', 'Out of memory')


@contextlib.contextmanager
def stage(what, *, done, total, settings):
  """Turns a failed allocation or compilation inside into a ResourceError.

  Args:
    what: the stage, e.g. 'pass 1 (VGG19, regions, pooling)'.
    done: images finished before it.
    total: images of the run.
    settings: what to change, e.g. 'features.batch_size (4)'.

  Raises:
    ResourceError: from MemoryError, or a jax runtime error whose message
      says memory ran out, naming the stage, the image count and settings;
      the original error is its __cause__.
  """
  try:
    yield
  except (MemoryError, jax.errors.JaxRuntimeError) as error:
    if isinstance(error, jax.errors.JaxRuntimeError) and not any(
      word in str(error) for word in _EXHAUSTED
    ):
      raise
    raise ResourceError(
      f'{what} failed after {done} of {total} images ({_describe()}): '
      f'{type(error).__name__}: {str(error)[:300]}; lower {settings}'
    ) from error


_TRACES = collections.Counter()  # jitted function name -> traces


def counted_jit(function, static_argnames):
  """jax.jit of `function` that counts its traces for `compilations`: one
  per compilation (a cache miss)."""

  @functools.wraps(function)
  def traced(*args, **kwargs):
    _TRACES[function.__name__] += 1
    return function(*args, **kwargs)

  return jax.jit(traced, static_argnames=static_argnames)


def compilations():
  """How many times the counted jits (batch_encoder's fused encode_batch,
  its staged forward and pooling) were compiled.

  Counts the traces of the functions jitted with `counted_jit`: jax.jit
  traces exactly once per compilation-cache miss (new shapes, dtypes, static
  options, input shardings). Functions they call are traced inside them and
  not counted.

  Returns:
    int, cumulative over this process.
  """
  return sum(_TRACES.values())
