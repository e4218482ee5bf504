"""Tuners from outside knobflow, run through knobflow's proposal path as peers for comparison."""
