"""Appion-side tables for the jobs subsystem (filled in by that subsystem)."""
__all__: list[str] = []
