"""Experiment configs: `get_config()` files for run.py's --config flag."""
