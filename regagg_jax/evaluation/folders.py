"""A user's own collection: a folder of images and a groundtruth.json (host).

FOLDER_GROUND_TRUTH       the ground-truth file name inside the folder
load_folder               folder -> groundtruth.Dataset (format below)
save_folder_ground_truth  a Dataset in that format
list_images               the image files under a folder
"""

import json
from pathlib import Path

import numpy as np

from regagg_jax.evaluation import groundtruth
from regagg_jax.evaluation import sources

FOLDER_GROUND_TRUTH = 'groundtruth.json'
IMAGE_EXTENSIONS = (
  '.jpg',
  '.jpeg',
  '.png',
  '.bmp',
  '.ppm',
  '.pgm',
  '.tif',
  '.tiff',
  '.webp',
)


def load_folder(
  root, *, ground_truth: str = FOLDER_GROUND_TRUTH
) -> groundtruth.Dataset:
  """A user's collection: a folder of images and a small JSON ground truth.

  root/groundtruth.json holds either explicit queries,

    {"images": ["a.jpg", "sub/b.jpg", ...],        # optional, default: all images, sorted
     "queries": [{"image": "a.jpg", "positives": ["sub/b.jpg"],
                  "junk": [], "box": [x1, y1, x2, y2]}]}   # junk and box optional

  or groups, where every image queries, its group's other images are positive
  and the query itself is dropped from its ranking (the Holidays protocol):

    {"groups": {"a.jpg": "tower", "sub/b.jpg": "tower", "c.jpg": "bridge"}}

  Names are paths relative to root, matched exactly (never by file name
  alone), and may not leave it; repeated names, bad boxes and boxes on only
  some queries are errors (groundtruth.read_folder validates the file).
  Query images may lie outside "images".
  """
  root = sources.check_folder(Path(root), Path(root).name)
  path = root / ground_truth
  if not path.is_file():
    raise sources.DatasetNotFoundError(
      f'{root.name}: no ground truth file {path} '
      '(format: see folders.load_folder)'
    )
  spec = groundtruth.read_folder(path)
  if 'groups' in spec:
    images = tuple(sorted(spec['groups']))
    labels = [spec['groups'][n] for n in images]
    index = {label: g for g, label in enumerate(dict.fromkeys(labels))}
    groups = np.array([index[label] for label in labels], np.int64)
    rows = np.arange(len(images), dtype=np.int64)
    return groundtruth.Dataset(
      root.name,
      'custom',
      images,
      images,
      rows,
      None,
      tuple(np.flatnonzero((groups == groups[i]) & (rows != i)) for i in rows),
      tuple(np.array([i]) for i in rows),
      groups=groups,
      image_root=root,
    )
  images = tuple(spec['images'] or list_images(root))
  where = {n: i for i, n in enumerate(images)}
  queries = spec['queries']
  unknown = sorted(
    {n for q in queries for n in q['positives'] + q['junk']} - set(where)
  )
  if unknown:
    raise groundtruth.GroundTruthError(
      f'{path}: positives/junk not among the images: {unknown[:5]}'
    )
  lookup = lambda names: np.array([where[n] for n in names], np.int64)
  boxes = (
    np.array([q['box'] for q in queries], np.float64)
    if queries and queries[0]['box'] is not None
    else None
  )
  return groundtruth.Dataset(
    root.name,
    'custom',
    images,
    tuple(q['image'] for q in queries),
    np.array([where.get(q['image'], -1) for q in queries], np.int64),
    boxes,
    tuple(lookup(q['positives']) for q in queries),
    tuple(lookup(q['junk']) for q in queries),
    image_root=root,
  )


def save_folder_ground_truth(dataset: groundtruth.Dataset, path) -> None:
  """Writes a dataset's ground truth in the explicit `load_folder` format."""
  queries = []
  for q, name in enumerate(dataset.queries):
    entry = {
      'image': name,
      'positives': [dataset.images[i] for i in dataset.positives[q]],
      'junk': [dataset.images[i] for i in dataset.junk[q]],
    }
    if dataset.boxes is not None:
      entry['box'] = [float(v) for v in dataset.boxes[q]]
    queries.append(entry)
  Path(path).write_text(
    json.dumps({'images': list(dataset.images), 'queries': queries}, indent=1)
  )


def list_images(folder) -> list[str]:
  """Image files under a folder (recursive) as sorted relative paths, minus corrupt Paris files.

  Dangling symbolic links are listed, so that reading reports them.
  """
  folder = Path(folder)
  names = sorted(
    str(p.relative_to(folder))
    for p in folder.rglob('*')
    if p.suffix.lower() in IMAGE_EXTENSIONS and (p.is_file() or p.is_symlink())
  )
  return [n for n in names if not sources.is_corrupt(n)]
