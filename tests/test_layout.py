"""Tests of the package layout: an acyclic import graph, one config reader."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'regagg_jax'
CONFIG_READER = 'regagg_jax.experiment'


def _modules():
  """{dotted module name: ast.Module} of every module under regagg_jax."""
  modules = {}
  for path in sorted(PACKAGE.rglob('*.py')):
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    if parts[-1] == '__init__':
      parts = parts[:-1]
    modules['.'.join(parts)] = ast.parse(path.read_text(), str(path))
  return modules


def _imports(tree, modules):
  """Modules of the package that a module imports, at any depth (faces of
  sub-packages are followed to the submodule named when there is one)."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name in modules)
    elif (
      isinstance(node, ast.ImportFrom)
      and node.module
      and (node.module.startswith('regagg_jax'))
    ):
      for alias in node.names:
        name = f'{node.module}.{alias.name}'
        found.add(name if name in modules else node.module)
  return found


def _cycle(graph):
  """A list of modules forming an import cycle, or None."""
  state = {}

  def visit(node, path):
    state[node] = 'open'
    for target in sorted(graph.get(node, ())):
      if state.get(target) == 'open':
        return path[path.index(target) :] + [target]
      if target not in state:
        found = visit(target, path + [target])
        if found:
          return found
    state[node] = 'done'
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node, [node])
      if found:
        return found
  return None


def test_cycle_finder_finds_a_cycle():
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) is None


def test_import_graph_of_the_modules_has_no_cycle():
  modules = _modules()
  faces = {
    name
    for name in modules
    if (PACKAGE.parent / name.replace('.', '/') / '__init__.py').is_file()
  }
  graph = {
    name: _imports(tree, modules) - faces
    for name, tree in modules.items()
    if name not in faces
  }
  assert len(graph) > 30
  assert _cycle(graph) is None, ' -> '.join(_cycle(graph))


@pytest.mark.parametrize(
  'name', sorted(n for n in _modules() if not n.startswith(CONFIG_READER))
)
def test_only_the_experiment_folder_reads_a_config(name):
  tree = _modules()[name]
  for node in ast.walk(tree):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      imported = [a.name for a in node.names] + [getattr(node, 'module', '')]
      assert not any(
        (n or '').startswith('ml_collections') for n in imported
      ), f'{name} imports ml_collections'
    if isinstance(node, ast.Name):
      assert node.id != 'ConfigDict', f'{name} uses ConfigDict'
    if isinstance(node, ast.arg):
      assert node.arg != 'config', f'{name} takes a config argument'


TESTS = pathlib.Path(__file__).resolve().parent


def _test_file(name):
  """tests/<folder>/test_<module>.py of regagg_jax.<folder>.<module>."""
  *folders, module = name.split('.')[1:]
  return TESTS.joinpath(*folders, f'test_{module}.py')


@pytest.mark.parametrize(
  'name',
  sorted(
    n
    for n in _modules()
    if not (PACKAGE.parent / n.replace('.', '/') / '__init__.py').is_file()
  ),
)
def test_every_module_has_its_test_file(name):
  path = _test_file(name)
  assert path.is_file(), f'{name} has no test file {path.relative_to(TESTS)}'
  tree = ast.parse(path.read_text(), str(path))
  assert any(
    isinstance(node, ast.FunctionDef) and node.name.startswith('test_')
    for node in tree.body
  ), f'{path.relative_to(TESTS)} has no test'
  package, module = name.rsplit('.', 1)
  assert f'from {package} import {module}\n' in path.read_text() or (
    f'from {name} import' in path.read_text()
  ), f'{path.relative_to(TESTS)} does not import {name}'
