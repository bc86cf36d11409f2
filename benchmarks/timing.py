"""Timing shared by the benchmarks: interleaved runs after a warm-up."""

import time

import jax


def interleaved(runners, repeats):
  """Calls each runner once (compile, warm-up), then all in turn `repeats` times.

  Interleaving spreads the load of other processes on a shared machine over
  every runner alike, so their ratios stay meaningful.

  Args:
    runners: {name: zero-argument callable}; outputs are blocked until ready.
    repeats: timed rounds.

  Returns:
    ({name: output of the first call}, {name: seconds of the first call},
    {name: [seconds of each timed call]}).
  """
  outputs, first, times = {}, {}, {name: [] for name in runners}
  for name, run in runners.items():
    start = time.perf_counter()
    outputs[name] = jax.block_until_ready(run())
    first[name] = time.perf_counter() - start
  for _ in range(repeats):
    for name, run in runners.items():
      start = time.perf_counter()
      jax.block_until_ready(run())
      times[name].append(time.perf_counter() - start)
  return outputs, first, times
