"""The README's "Using it from your code" block runs as written."""

import ast
import contextlib
import io
import os
import re

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _code_block(section):
  """The first ```python block after the README heading `section`."""
  with open(os.path.join(REPO_ROOT, 'README.md')) as stream:
    text = stream.read()
  start = text.index(f'## {section}\n')
  return re.search(r'```python\n(.*?)```', text[start:], re.S).group(1)


@pytest.mark.weights
def test_using_it_from_your_code_block_runs_and_finds_each_objects_views(
  monkeypatch,
):
  monkeypatch.chdir(REPO_ROOT)
  namespace = {}
  output = io.StringIO()
  with contextlib.redirect_stdout(output):
    exec(
      compile(_code_block('Using it from your code'), 'README.md', 'exec'),
      namespace,
    )  # pylint: disable=exec-used
  ranks = np.argsort(-np.asarray(namespace['scores_qe']), axis=1)[:, :4]
  assert str(ranks) in output.getvalue()
  for query, top in zip(namespace['queries'], ranks):
    assert top[0] == query  # eq. 7: an image matches itself best
    assert np.sum(top // 4 == query // 4) >= 3, (query, top)  # its 4 views
  assert namespace['x'].shape == (12, 8, 16)


def _readme_spans():
  with open(os.path.join(REPO_ROOT, 'README.md')) as stream:
    return re.findall(r'`([^`\n]+)`', stream.read())


def _top_level_names(path):
  """Functions, classes and assigned names at the top of a module."""
  with open(path) as stream:
    tree = ast.parse(stream.read(), path)
  names = set()
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, ast.Assign):
      names.update(t.id for t in node.targets if isinstance(t, ast.Name))
  return names


def _modules_by_name():
  """{module basename: path} of the package's modules (names are unique)."""
  modules = {}
  for root, _, files in os.walk(os.path.join(REPO_ROOT, 'regagg_jax')):
    for file in files:
      if file.endswith('.py') and file != '__init__.py':
        modules.setdefault(file[:-3], []).append(os.path.join(root, file))
  return {name: paths[0] for name, paths in modules.items() if len(paths) == 1}


def _config_fields():
  """Dotted paths of every field of configs/default.py (section.field)."""
  from configs import default  # pylint: disable=g-import-not-at-top

  fields = set()

  def walk(prefix, node):
    for key, value in node.items():
      fields.add(f'{prefix}{key}')
      if hasattr(value, 'items'):
        walk(f'{prefix}{key}.', value)

  walk('', default.get_config())
  return fields


def test_every_file_function_reference_of_the_readme_exists():
  """`path.py: name, name(args)` names top-level definitions of that file."""
  references = [
    span
    for span in _readme_spans()
    if re.fullmatch(r'[\w/]+\.py: [\w(), =]+', span)
  ]
  assert len(references) >= 12
  for span in references:
    path, names = span.split(': ')
    path = os.path.join(REPO_ROOT, path)
    assert os.path.isfile(path), f'README.md: {span}: no file {path}'
    defined = _top_level_names(path)
    for name in re.sub(r'\([^)]*\)', '', names).split(','):
      assert name.strip() in defined, f'README.md: {span}: no {name.strip()}'


FILE_TYPES = ('json', 'py', 'png', 'csv', 'txt', 'md')  # `groundtruth.json`


def test_every_module_dot_name_of_the_readme_exists():
  """`module.name` (a package module's basename) names a definition of that
  module, unless it is a config field (`pca.min_vectors_per_dim`) or a
  file (`groundtruth.json`)."""
  modules, fields = _modules_by_name(), _config_fields()
  references = [
    match
    for span in _readme_spans()
    for match in [re.fullmatch(r'(\w+)\.(\w+)(\(.*\))?', span)]
    if match and match.group(1) in modules and match.group(2) not in FILE_TYPES
  ]
  assert len(references) >= 4
  for match in references:
    module, name = match.group(1), match.group(2)
    if f'{module}.{name}' in fields:
      continue
    assert name in _top_level_names(modules[module]), (
      f'README.md: `{match.group(0)}`: {modules[module]} defines no {name}'
    )
