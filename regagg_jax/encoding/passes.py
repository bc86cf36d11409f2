"""What every pass over image files shares, one method or several.

  read_guarded     a pass's reading set up: rows checked, the image reader,
                   threaded batches, each under guard_batches
  guard_batches    batches, each with its resources guard (memory maps,
                   failed allocations)
  collect_outputs  a batch's outputs -> per-image (descriptors, valid,
                   masks, size), copied out of the batch
  assemble_store   per-image outputs -> records.Store, in the order of rows

file_encoder (one method a pass) and method_encoder (several from one
VGG19 pass) run their batches through these. Nothing here reads a config.
"""

import itertools

import numpy as np

from regagg_jax.encoding import resources
from regagg_jax.features import images
from regagg_jax.features import reading
from regagg_jax.storage import records


def read_guarded(
  image_paths,
  rows,
  skipped,
  *,
  what,
  boxes,
  rotations,
  max_size,
  apply_exif,
  batch_size,
  num_threads,
  prefetch,
  also_lower=None,
  ahead=(),
  read_rows=None,
  desc=None,
):
  """The reading of one pass over image_paths[r], r in rows.

  Checks the rows and counts (reading.check_reading), then reads batches of
  one shape bucket on threads (reading.read_batches); each, after the
  batches `ahead`, runs under `guard_batches`.

  Args:
    image_paths: all N image files (rows index it).
    rows: the rows of the pass, without repeats (what `total` counts).
    skipped: list the [path, reason] of unreadable images are appended to.
    what: the stage a ResourceError names.
    boxes, rotations, max_size, apply_exif: as reading.reader takes them.
    batch_size, num_threads, prefetch: as reading.read_batches takes them.
    also_lower: one more setting a ResourceError names, or None.
    ahead: batches already read, guarded first (reading.Batch-like).
    read_rows: the rows to read (default: rows).
    desc: the progress bar's label (default: what).

  Returns:
    (read: row -> uint8 (H_I, W_I, 3) image (reading.reader), iterator of
    (guard, batch) (guard_batches), the settings a ResourceError names).

  Raises:
    ValueError: bad rows or counts.
  """
  reading.check_reading(image_paths, rows, batch_size, num_threads, prefetch)
  read = reading.reader(
    image_paths,
    boxes=boxes,
    rotations=rotations,
    max_size=max_size,
    apply_exif=apply_exif,
  )
  batches = reading.read_batches(
    read,
    rows if read_rows is None else read_rows,
    image_paths,
    skipped,
    batch_size=batch_size,
    num_threads=num_threads,
    prefetch=prefetch,
    desc=what if desc is None else desc,
  )
  settings = (
    f'features.batch_size ({batch_size}), features.max_size ({max_size})'
  )
  if also_lower is not None:
    settings += f' or {also_lower}'
  guarded = guard_batches(
    itertools.chain(ahead, batches), what, len(rows), settings
  )
  return read, guarded, settings


def guard_batches(batches, what, total, settings):
  """Yields (guard, batch) for each of `batches` (reading.Batch-like).

  Compiled code is released first when memory maps crowd
  (resources.release_compiled), and the batch's work runs `with guard`
  (resources.stage: a failed allocation is a ResourceError naming `what`,
  the images done out of `total` and the `settings` to lower).
  """
  done = 0
  for batch in batches:
    resources.release_compiled(done=done, what=what)
    yield (
      resources.stage(what, done=done, total=total, settings=settings),
      batch,
    )
    done += len(batch.rows)


def collect_outputs(outputs, rows, sizes, descriptors, valid, masks):
  """Keeps each real image's outputs of one batch, copied out of it.

  Args:
    outputs: {row: (descriptors, valid, masks, size)}, filled in place.
    rows: the batch's real rows, one per leading slot (padding slots last).
    sizes: int (B, 2) height, width of each slot's image in pixels.
    descriptors: float32 (B, M, D) of the batch.
    valid: bool (B, M) region validity.
    masks: bool (B, M, H, W) regions on the batch's padded feature grid,
      cut here to each image's own grid (images.feature_shape of its size).
  """
  descriptors, valid, masks = (
    np.asarray(a) for a in (descriptors, valid, masks)
  )
  for slot, row in enumerate(rows):  # copies: the batch's buffers are freed
    height_i, width_i = (int(s) for s in sizes[slot])
    height, width = images.feature_shape(height_i, width_i)
    outputs[row] = (
      np.array(descriptors[slot]),
      np.array(valid[slot]),
      np.array(masks[slot, :, :height, :width]),
      (height_i, width_i),
    )


def assemble_store(
  image_paths, rows, apply_exif, outputs, skipped, num_regions, reduction
):
  """Builds a Store of the encoded rows, in the order of `rows`.

  Args:
    image_paths: all N image files (rows index it).
    rows: the rows asked for; those missing from `outputs` are left out.
    apply_exif: recorded in the metadata.
    outputs: {row: (descriptors (M, D), valid (M,), masks (M, h, w),
      (height, width))}, as `collect_outputs` fills it.
    skipped: [path, reason] of the unreadable rows, recorded as is.
    num_regions: M of the store.
    reduction: U^1 kept in the store (its hash in the metadata), or None.

  Returns:
    records.Store: float32 (N', M, D) descriptors, bool (N', M) validity,
    bool (N', M, H, W) masks zero-padded to the largest grid, int32 (N', 2)
    grid, metadata 'inputs_hash', 'apply_exif', 'reduction_hash', 'rows',
    'sizes', 'skipped'.
  """
  rows = [r for r in rows if r in outputs]
  dim = outputs[rows[0]][0].shape[-1] if rows else 0
  grid = np.array(
    [o[2].shape[1:] for o in outputs.values()] or [(0, 0)], np.int32
  ).max(axis=0)
  store = records.Store(
    descriptors=np.zeros((len(rows), num_regions, dim), np.float32),
    valid=np.zeros((len(rows), num_regions), bool),
    masks=np.zeros((len(rows), num_regions, *grid), bool),
    grid=np.zeros((len(rows), 2), np.int32),
    image_paths=tuple(str(image_paths[r]) for r in rows),
    reduction=reduction,
    metadata={
      'inputs_hash': records.hash_config([str(p) for p in image_paths]),
      'apply_exif': apply_exif,
      'reduction_hash': records.hash_params(reduction),
      'rows': rows,
      'sizes': [list(outputs[r][3]) for r in rows],
      'skipped': skipped,
    },
  )
  for position, row in enumerate(rows):
    descriptors, valid, masks, _ = outputs[row]
    store.descriptors[position] = descriptors
    store.valid[position] = valid
    store.masks[position, :, : masks.shape[1], : masks.shape[2]] = masks
    store.grid[position] = masks.shape[1:]
  return store
