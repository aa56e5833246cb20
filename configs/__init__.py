"""Experiment config files: each defines get_config(arg) -> ConfigDict (+ optional sweep(add)).

Run one with `python -m experiments.run --config configs/<x>.py[:variant] --workdir DIR`. Files whose name
starts with an underscore are test fixtures, not experiments.
"""
