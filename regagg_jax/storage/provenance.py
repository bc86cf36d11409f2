"""Provenance: does a store, fit or index belong to what is asked of it?

  differences   'field: stored X, given Y' for every differing config value
  is_whitened   whether a store holds eq. (6) outputs
  check_stale   refuses metadata that lacks the expected values

Stores, fits and indexes record the hashes of what made them (the config
sections, U^1, the whitening, the store); these plain functions compare
those records, for `store_header` on disk and for the experiment layer.
"""

NO_HASH = 'none'
"""records.hash_params of None: no U^1 or no whitening."""


def differences(stored, given, prefix=''):
  """'field: stored X, given Y' for every differing (nested) field.

  Args:
    stored: dict of JSON values recorded with a store, fit or index.
    given: dict of the values asked for now.
    prefix: dotted path of the enclosing section.

  Returns:
    list of str, sorted by field; image_paths lists are summarised by
    their lengths and first differing row.
  """
  lines = []
  for key in sorted(set(stored) | set(given)):
    old, new = stored.get(key), given.get(key)
    if isinstance(old, dict) and isinstance(new, dict):
      lines += differences(old, new, f'{prefix}{key}.')
    elif key == 'image_paths' and old != new:
      first = next(
        (i for i, (a, b) in enumerate(zip(old, new)) if a != b),
        min(len(old), len(new)),
      )
      lines.append(
        f'image_paths: {len(old)} stored, {len(new)} given, '
        f'first difference at row {first}'
      )
    elif old != new:
      lines.append(f'{prefix}{key}: stored {old!r:.80}, given {new!r:.80}')
  return lines


def is_whitened(metadata):
  """Whether a store's metadata says it holds whitened (eq. 6) vectors."""
  return metadata.get('whitening_hash', NO_HASH) != NO_HASH


def check_stale(what, metadata, expected, advice):
  """Refuses `metadata` unless it has every value of `expected`.

  Args:
    what: the thing checked, for the message (e.g. 'the region index').
    metadata: dict recorded with it.
    expected: dict of the values it must have.
    advice: what to do about it, e.g. 'build it again'.

  Raises:
    ValueError: naming the differing fields.
  """
  stale = {
    k: metadata.get(k) for k in expected if metadata.get(k) != expected[k]
  }
  if stale:
    raise ValueError(f'{what} was built with {stale}, not {expected}; {advice}')
