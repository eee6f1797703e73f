"""Experiments: many runs. ``sweep`` (a grid of runs, locally or on Slurm), ``runs`` (reading
run folders back into a table), ``results`` (the paper's figures and tables from them).
"""
