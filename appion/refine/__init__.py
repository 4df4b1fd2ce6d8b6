"""Refinement jobs on processing hosts, job lifecycle and workflows."""
