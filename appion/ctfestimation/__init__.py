"""CTF estimation of micrographs and movies."""
