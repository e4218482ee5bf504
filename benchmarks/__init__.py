"""knobflow's benchmarks (a package so that tests can import the problems and the simulator)."""
