"""Command line of regagg_jax from a checkout: regagg_jax.experiment.cli,
installed as the `regagg-jax` console script; `python run.py --help` lists
the commands and flags.

  python run.py                                   # the demo (configs/demo.py)
  python run.py --config=configs/oxford5k.py --mode=eval
"""

from regagg_jax.experiment import cli

if __name__ == '__main__':
  cli.main()
