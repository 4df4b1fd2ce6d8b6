"""`python loop.py ...`: the appion processing daemon (same options as `appion loop`)."""
from appion.base.loop import main

if __name__ == "__main__":
    raise SystemExit(main())
