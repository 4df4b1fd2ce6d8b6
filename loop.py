"""`python loop.py ...`: the appion processing daemon (same options as `appion loop`).

Goes through the `appion` entry point so that `--config FILE` is read before the database is touched.
"""
import sys

from appion.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["loop", *sys.argv[1:]]))
