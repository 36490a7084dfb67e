"""The training engine: one loop for every method, the gradient engine, config, results I/O."""
