"""`appion export relion`: the parser only (light: argparse and appion.base.entry)."""
from __future__ import annotations

from appion.base.entry import Command


def add_parser(subparsers) -> None:
    export = subparsers.add_parser("export", help="write a session's results for other programs (RELION)")
    formats = export.add_subparsers(dest="export_format", required=True)
    p = formats.add_parser(
        "relion", help="RELION 3.1+ corrected_micrographs.star and micrographs_ctf.star of a session's accepted "
                       "exposures",
        description="Writes DIR/corrected_micrographs.star and DIR/micrographs_ctf.star (optics table, RELION's "
                    "defocus and angle conventions) for the exposures a loop run processed, with symbolic links "
                    "under DIR/Micrographs and DIR/CtfImages to the aligned sums and CTF diagnostic images.  "
                    "Rejected exposures (hidden or trashed in the viewer, assessed 'do not keep', or rejected by "
                    "a curation step) are left out unless --all is given.")
    p.add_argument("--session", required=True, help="session name")
    p.add_argument("--run", help="loop run name (default: the session's newest loop run)")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output directory (created if needed)")
    p.add_argument("--all", dest="include_rejected", action="store_true", help="also the rejected exposures")
    p.add_argument("--relative-to", metavar="PROJECT",
                   help="write paths relative to this RELION project directory (default: absolute paths)")
    p.add_argument("--project-id", type=int, help="project whose appion database to use (MySQL)")
    p.set_defaults(func=Command("appion.export.commands:cmd_export_relion"))
