"""Alerts and notifications: mail (SMTP) and a webhook (JSON POST) for what staff must know without watching
a page: exposures failing, the loop falling behind, the microscope stopped, a session finished, refinement jobs
completed or failed.

- config.py  the `[notify]` table of the config (validated: unknown keys and bad values are configuration errors)
- calc.py    pure: the events a stream of loop snapshots raises, each once per condition (dedupe state)
- messages.py pure: subjects and bodies people read
- send.py    delivery: smtplib and urllib with timeouts; failures are logged once and never raised
- monitor.py `LoopMonitor` (the loop calls observe() each poll and send() with what it returns) and
             `notify_job_state` (refinement jobs)
- cli.py     the `appion notify test` parser (light)

Importing this package stays light: it is only a namespace.
"""
