"""Sample efficiency of knobflow's tuners: how good a configuration each finds in 10-100 trials, offline.

See README.md beside this file for the problems, the metrics and how to run it.
"""
