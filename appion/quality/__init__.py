"""The quality step: per-exposure motion, CTF, tilt, ice and image-sanity metrics, and curation by thresholds."""
