"""Data parallelism: batches over a device mesh, image lists over hosts.

  make_mesh       a 1-D jax.sharding.Mesh over this process's devices
  shard_batch     a padded batch split along its leading axis B over the mesh
  replicate       parameters (VGG19, U^1, whitening) copied to every device
  map_batch       a per-image batch function run on each device's own slice
  initialize      jax.distributed start-up for multi-host encoding
  process_shards  the store shards one process encodes (strided)
  barrier         waits for every process (no-op for one)

Within one process, file_encoder.encode_rows(..., mesh=make_mesh()) places
each padded batch (rgb, sizes, cells) with shard_batch, so that the one jitted
encoder (batch_encoder.encode_batch) runs B / num_devices images per device; the
batch size must be a multiple of the device count. Every image is encoded
independently, so sharded and single-device results are equal up to float
rounding. On a CPU the devices can be simulated:
XLA_FLAGS=--xla_force_host_platform_device_count=4.

jax.jit of a vmapped function on a sharded batch lets XLA's partitioner
choose, and it inserts collectives where per-image independence is not
visible to it: a vmapped while_loop (detector shape adaptation, k-means)
all-reduces its condition across devices every iteration, and top_k /
sort over a batched axis all-gathers the whole batch onto every device
(measured on the fused encoder with 4 CPU devices: 4 all-reduces, 10
all-gathers). map_batch wraps such a function in jax.shard_map so that
each device runs the function on its B / num_devices images with no
communication.

Across hosts, every host runs the same command on the same configuration and
the same shared store directory (a network file system), differing only in
--process_id:

  python run.py --config=configs/oxford5k.py --mode=encode \\
      --coordinator_address=host0:12345 --num_processes=P --process_id=i

run.py calls initialize(coordinator_address, P, i) before any other JAX
call (jax.distributed.initialize: process 0 also serves the coordinator at
host0:12345, which every host must reach). The store is written in shards
of store_writer.build_store's shard_size images; process i encodes the shards
process_shards(num_shards) = [n for n in range(num_shards) if n % P == i]
on its local devices (make_mesh() meshes jax.local_devices() only, so no
data crosses hosts while encoding), writing each shard file atomically into
the shared directory. Every process then calls barrier('encoded ...')
unconditionally (also one that found all shards done), process 0 alone
finalises the store (store_writer.finalize_store), and a second barrier
keeps the others from reading it before that. A killed run is restarted
with the same command: finished shards are kept. With one process (the
default) initialize and barrier do nothing, so the same code runs on a
single machine. On CPU-only hosts the barrier's all-gather runs over gloo
(jax_cpu_collectives_implementation, set by initialize); two CPU processes
on localhost waited 400 s at one without a timeout (jax 0.10.2).
"""

import numbers
from typing import Any, Callable, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

CPU_COLLECTIVES = 'gloo'
"""CPU collectives initialize selects when none is configured (the barrier's
all-gather between CPU processes needs one)."""


def _check_count(name: str, value: Any, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f'{name} must be an int, got {value!r}')
  if value < minimum:
    raise ValueError(f'{name} must be >= {minimum}, got {value}')
  return int(value)


def make_mesh(
  devices: Sequence[jax.Device] | None = None, *, axis: str = 'batch'
) -> jax.sharding.Mesh:
  """A 1-D device mesh for data parallelism over images.

  Args:
    devices: the devices to split batches over; None: jax.local_devices()
      (this process's devices only, also after initialize).
    axis: the mesh axis name that shard_batch splits the batch axis B over.

  Returns:
    jax.sharding.Mesh of shape (len(devices),) with axis name `axis`.

  Raises:
    ValueError: no devices, a device given twice, or an empty axis name.
    TypeError: an entry that is not a jax Device.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  if not devices:
    raise ValueError('devices must hold at least one device, got none')
  for device in devices:
    if not isinstance(device, jax.Device):
      raise TypeError(f'devices must be jax Devices, got {device!r}')
  if len(set(devices)) != len(devices):
    raise ValueError(f'devices must be distinct, got {devices}')
  if not isinstance(axis, str) or not axis:
    raise ValueError(f'axis must be a non-empty string, got {axis!r}')
  return jax.sharding.Mesh(np.array(devices), (axis,))


def _check_mesh(mesh: Any) -> str:
  """The single axis name of a 1-D mesh."""
  if not isinstance(mesh, jax.sharding.Mesh):
    raise TypeError(
      f'mesh must be a jax.sharding.Mesh (make_mesh), got {type(mesh).__name__}'
    )
  if len(mesh.axis_names) != 1:
    raise ValueError(
      f'mesh must be 1-D (make_mesh), got axes '
      f'{mesh.axis_names} of shape {mesh.devices.shape}'
    )
  return mesh.axis_names[0]


def shard_batch(mesh: jax.sharding.Mesh, tree: Any) -> Any:
  """Splits every array of a batch along its leading axis B over the mesh.

  Args:
    mesh: a 1-D mesh from make_mesh.
    tree: a pytree of arrays (numpy or jax), each (B, ...) with B a multiple
      of mesh.size, e.g. the padded batch of images.pad_batch: uint8
      (B, H_I, W_I, 3) rgb, int32 (B, 2) sizes, bool (B, H, W) cells.

  Returns:
    The same pytree of jax.Arrays placed with NamedSharding(mesh, P(axis)):
    device d of the mesh holds rows [d * B / n, (d + 1) * B / n).

  Raises:
    TypeError: mesh is not a jax.sharding.Mesh.
    ValueError: a multi-axis mesh, or a leaf that is a scalar or whose
      leading dimension is not a multiple of the mesh size (named by its
      pytree path).
  """
  axis = _check_mesh(mesh)
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  for path, leaf in leaves:
    shape = np.shape(leaf)
    name = jax.tree_util.keystr(path) or 'the array'
    if not shape:
      raise ValueError(
        f'{name}: shard_batch needs arrays with a leading '
        f'batch axis, got a scalar'
      )
    if shape[0] % mesh.size:
      raise ValueError(
        f'{name}: leading dimension {shape[0]} (shape {shape}) is not a '
        f'multiple of the {mesh.size} devices of the mesh; pad the batch '
        f'(batch_size a multiple of {mesh.size})'
      )
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))
  return jax.device_put(tree, sharding)


def replicate(mesh: jax.sharding.Mesh, tree: Any) -> Any:
  """Copies every array of a pytree (e.g. VGG19 variables) to each device.

  Args:
    mesh: a 1-D mesh from make_mesh.
    tree: a pytree of arrays of any shapes.

  Returns:
    The same pytree of jax.Arrays placed with NamedSharding(mesh, P()).

  Raises:
    TypeError / ValueError: as shard_batch, for the mesh.
  """
  _check_mesh(mesh)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.device_put(tree, sharding)


def map_batch(
  mesh: jax.sharding.Mesh, function: Callable, *, batched: Sequence[bool]
) -> Callable:
  """Runs a per-image batch function on each device's slice, no collectives.

  Args:
    mesh: a 1-D mesh from make_mesh.
    function: positional arguments -> a pytree of (B, ...) arrays, treating
      the images of its batch arguments independently (e.g. a vmap); static
      options bound beforehand (functools.partial).
    batched: one flag per positional argument: True splits its arrays
      along the leading axis B (a multiple of mesh.size), False passes it
      whole to every device (VGG19 variables, PCA parameters, None).

  Returns:
    A function of the same arguments (jax.shard_map; wrap it in jax.jit)
    whose outputs are (B, ...) arrays sharded along the mesh axis, equal to
    function's on one device up to float rounding.

  Raises:
    TypeError / ValueError: a bad mesh, function or batched flags.
  """
  axis = _check_mesh(mesh)
  if not callable(function):
    raise TypeError(f'function must be callable, got {function!r}')
  batched = tuple(batched)
  if not batched or not all(isinstance(flag, bool) for flag in batched):
    raise ValueError(f'batched must be one bool per argument, got {batched}')
  split, whole = jax.sharding.PartitionSpec(axis), jax.sharding.PartitionSpec()
  # check_vma=False: the per-image loops (while_loop carries that start
  # replicated and become per-device) need no cross-device typing.
  return jax.shard_map(
    function,
    mesh=mesh,
    out_specs=split,
    in_specs=tuple(split if flag else whole for flag in batched),
    check_vma=False,
  )


def initialize(
  coordinator_address: str | None = None,
  num_processes: int = 1,
  process_id: int = 0,
) -> None:
  """Joins a multi-process (multi-host) run; a no-op for one process.

  Must run before any other JAX call of the process (see the module
  docstring for the launch). For CPU processes it selects the
  CPU_COLLECTIVES implementation unless one is configured.

  Args:
    coordinator_address: 'host:port' of process 0, reachable by every
      process; needed when num_processes > 1.
    num_processes: P, the number of processes (hosts) in the run.
    process_id: this process's number i, 0 <= i < P.

  Raises:
    TypeError: a non-integer count or id.
    ValueError: P < 1, i outside [0, P), or a missing / malformed address.
  """
  num_processes = _check_count('num_processes', num_processes, 1)
  process_id = _check_count('process_id', process_id, 0)
  if process_id >= num_processes:
    raise ValueError(
      f'process_id must be in [0, {num_processes}), got {process_id}'
    )
  if num_processes == 1:
    return
  host, _, port = str(coordinator_address or '').rpartition(':')
  if (
    not isinstance(coordinator_address, str)
    or not host
    or not (port.isdigit() and 0 < int(port) < 65536)
  ):
    raise ValueError(
      f'coordinator_address must be "host:port" of process 0 '
      f'for {num_processes} processes, got '
      f'{coordinator_address!r}'
    )
  if getattr(
    jax.config, 'jax_cpu_collectives_implementation', CPU_COLLECTIVES
  ) in (None, 'none'):  # older JAX: no default
    jax.config.update('jax_cpu_collectives_implementation', CPU_COLLECTIVES)
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  logging.info(
    'process %d of %d joined %s; %d local of %d devices',
    process_id,
    num_processes,
    coordinator_address,
    jax.local_device_count(),
    jax.device_count(),
  )


def process_shards(
  num_shards: int,
  *,
  process_index: int | None = None,
  process_count: int | None = None,
) -> list[int]:
  """The shard numbers one process encodes: n with n % count == index.

  Strided, so the processes' shards are disjoint, cover range(num_shards)
  and differ in number by at most one.

  Args:
    num_shards: shards of the store (store_writer.build_store's shard_size
      rows each).
    process_index: this process's number; None: jax.process_index().
    process_count: the number of processes; None: jax.process_count().

  Returns:
    The shard numbers, ascending.

  Raises:
    TypeError: a non-integer argument.
    ValueError: num_shards < 0, process_count < 1 or process_index outside
      [0, process_count).
  """
  num_shards = _check_count('num_shards', num_shards, 0)
  count = _check_count(
    'process_count',
    jax.process_count() if process_count is None else process_count,
    1,
  )
  index = _check_count(
    'process_index',
    jax.process_index() if process_index is None else process_index,
    0,
  )
  if index >= count:
    raise ValueError(f'process_index must be in [0, {count}), got {index}')
  return list(range(index, num_shards, count))


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier of the same name.

  Args:
    name: the barrier's name; every process must pass the same one (a
      mismatch raises an error in multihost_utils).

  Raises:
    ValueError: an empty name.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f'barrier name must be a non-empty string, got {name!r}')
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
