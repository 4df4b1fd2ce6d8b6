"""`appion session import` and `appion session set-gain`: the parsers (light); the commands are
appion.base.session.commands."""
from __future__ import annotations

import argparse

from appion.base.entry import Command

IMPORT_EPILOG = """\
A movie is registered only when it is complete and consistent; otherwise it is refused with its own reason,
one line per movie on stderr (`refused PATH: REASON`), and recorded for `appion status`:
  - its frame count must equal its metadata's (SerialEM .mdoc NumSubFrames, EPU .xml fractions, MRC header);
  - it must be a movie, not a single image (gain, dark and defect references in the frames directory, named
    like gain/norm/dark/CountRef/SuperRef, and the --gain file itself are not movies and are left alone);
  - the gain (a gain named by its .mdoc next to it, else --gain) must fit its frames in the camera's
    orientation (a smaller gain is upsampled only for EER super-resolution).  A --gain that does not fit the
    movies is an error before anything is registered.
Without --watch every movie is taken as it is now.  With --watch a movie is checked once its size has not
changed for --settle seconds; one that may still be being written (fewer frames than its metadata says, data
cut off) waits, and is refused once unchanged for --max-wait seconds.  Database outages are waited out.
To replace the gain of a session already imported, use `appion session set-gain`."""


def add_parser(subparsers) -> None:
    sess = subparsers.add_parser("session", help="register exposures").add_subparsers(dest="session_cmd", required=True)
    imp = sess.add_parser("import", help="register movies of a directory as a Leginon-like session",
                          epilog=IMPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("--name", required=True, help="session name: a plain name (letters, digits, '.', '_', '-')")
    imp.add_argument("--frames-dir", required=True)
    imp.add_argument("--apix", type=float, required=True, help="pixel size in Å (file metadata wins)")
    imp.add_argument("--kv", type=float, required=True)
    imp.add_argument("--cs", type=float, required=True, help="spherical aberration in mm")
    imp.add_argument("--dose", type=float, required=True, help="total dose per exposure in e/Å²")
    imp.add_argument("--gain", help="gain reference (MRC or TIFF) for the movies registered by this import")
    imp.add_argument("--preset", default="en")
    imp.add_argument("--frame-rotate", type=int, default=0, choices=range(4))
    imp.add_argument("--frame-flip", type=int, default=0, choices=(0, 1, 2))
    imp.add_argument("--watch", action="store_true", help="keep registering new movies until SIGTERM")
    imp.add_argument("--interval", type=float, default=1.0, help="seconds between directory scans (--watch)")
    imp.add_argument("--settle", type=float, default=10.0,
                     help="seconds a movie's size must stay unchanged before it is checked (--watch; default 10, "
                          "long enough for slow network writers)")
    imp.add_argument("--max-wait", type=float, default=None,
                     help="seconds a movie that may still be being written (fewer frames than its metadata says) "
                          "is waited for while unchanged before it is refused (--watch; default 10 x --settle)")
    imp.set_defaults(func=Command("appion.base.session.commands:cmd_session_import"))

    setg = sess.add_parser("set-gain", help="replace the gain reference of a session's unprocessed exposures",
                           description="Give a session's exposures that are not processed yet (no aligned frames) a "
                                       "new gain reference (Leginon's NormImageData), e.g. after importing with the "
                                       "wrong --gain.  The gain must fit every one of them (nothing changes "
                                       "otherwise); processed exposures keep the gain their results were computed "
                                       "with.  Later imports of the session need the same --gain.")
    setg.add_argument("--name", required=True, help="the session")
    setg.add_argument("--gain", required=True, help="the new gain reference (MRC or TIFF)")
    setg.set_defaults(func=Command("appion.base.session.commands:cmd_session_set_gain"))
