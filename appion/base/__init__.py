"""Shared pieces: database models, configuration, cluster, loop core, job states, workflow rules, image I/O."""
