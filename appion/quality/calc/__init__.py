"""Pure computations of the quality step (no I/O, no Django)."""
