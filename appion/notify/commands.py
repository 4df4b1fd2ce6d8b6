"""What `appion notify test` does."""
from __future__ import annotations

import socket
import sys
import time


def cmd_notify_test(args) -> int:
    """Send one test message through every configured channel; exit 1 when one failed, 2 when none is set."""
    from appion.notify.config import load_notify_config
    from appion.notify.messages import self_test
    from appion.notify.send import Sender

    config = load_notify_config()
    if not config.channels:
        print("appion: no notification channel configured: add smtp (with from and to) and/or webhook to [notify] "
              "in the config", file=sys.stderr)
        return 2
    if config.mail and not config.to:
        print("note: [notify] to is empty: the test mail has no recipient", file=sys.stderr)
    results = Sender(config).deliver(self_test(config, socket.gethostname(), time.time()))
    for r in results:
        print(f"{r.channel}: {'ok' if r.ok else 'FAILED'}: {r.detail}", flush=True)
    return 0 if results and all(r.ok for r in results) else 1
