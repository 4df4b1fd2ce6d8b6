"""Appion-side tables for the loop subsystem (filled in by that subsystem)."""
__all__: list[str] = []
