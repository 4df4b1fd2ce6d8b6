"""The thresholds in force while the loop runs (loop process; reads the config file, no Django).

The quality step's settings hold the thresholds given on the command line.  The config file's
[curation] table (same names: max_ctf_resolution, max_total_drift, max_astigmatism, max_ice_thickness,
max_tilt, reject_crystalline_ice) overrides the keys it names: at the start (from the loaded config) and
again whenever the file changes (its modification time or size), so a person can tighten or loosen a
limit without stopping the loop; the new limits apply to the exposures stored after the change.  A key
removed from the file falls back to the command line's value.  A file that cannot be read or parsed
keeps the limits in force (with a warning), so a half-saved edit never stops the loop.
"""
from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path

from appion.quality.calc.internal.verdict import CurationError, calc_thresholds_from_table, calc_thresholds_text
from appion.quality.records import Thresholds

log = logging.getLogger("appion.quality")


def _file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class LiveThresholds:
    """Thresholds of one step run: the command line's, overridden by the config file's [curation]."""

    def __init__(self, base: Thresholds, config_path: Path, initial_table: dict | None = None):
        """initial_table: the [curation] table of the configuration loaded at the start (the file is read
        again on the first current() when it exists, so a change made since the start is not missed)."""
        self.base = base
        self.path = Path(config_path)
        self.stamp = None
        try:
            self.thresholds = calc_thresholds_from_table(initial_table or {}, base)
        except CurationError as exc:
            raise CurationError(f"config file {self.path}: {exc}") from None
        log.info("curation thresholds: %s", calc_thresholds_text(self.thresholds))

    def current(self) -> Thresholds:
        """The thresholds in force now (the config file is read again when it has changed)."""
        stamp = _file_stamp(self.path)
        if stamp == self.stamp:
            return self.thresholds
        self.stamp = stamp
        if stamp is None:
            table: dict = {}
        else:
            try:
                table = tomllib.loads(self.path.read_text()).get("curation", {})
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                log.warning("config file %s changed but cannot be read (%s); keeping the curation thresholds %s",
                            self.path, exc, calc_thresholds_text(self.thresholds))
                return self.thresholds
        try:
            new = calc_thresholds_from_table(table, self.base)
        except CurationError as exc:
            log.warning("config file %s: %s; keeping the curation thresholds %s", self.path, exc,
                        calc_thresholds_text(self.thresholds))
            return self.thresholds
        if new != self.thresholds:
            log.info("curation thresholds changed (config file %s): %s", self.path, calc_thresholds_text(new))
            self.thresholds = new
        return self.thresholds
