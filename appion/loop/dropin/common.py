"""The options every classic appionLoop program takes: appionScript's, appionLoop2's, SEMC Appion's additions,
and appion's own loop options (cluster, retries, polling).  Data only."""
from __future__ import annotations

from appion.loop.dropin.options import Group, NoEffect, Opt

TILTS = ("notilt", "hightilt", "lowtilt", "minustilt", "plustilt", "all")
CLUSTERS = ("local", "slurm", "pbs", "sge", "lsf")

# appionScript.setupGlobalParserOptions (leginon-org/leginon, nysbc/appion) and SEMC's global parser.
SCRIPT = (
    Opt(("-n", "--runname"), dict(dest="runname", metavar="NAME",
                                  help="run name: a plain name (letters, digits, '.', '_', '-'); the last component "
                                       "of --rundir when both are given")),
    Opt(("-d", "--description"), dict(metavar="TEXT", help="description of the run (recorded with its parameters)")),
    Opt(("-p", "--projectid"), dict(type=int, metavar="#",
                                    help="project id: the run's rows go to the project's appion database (its "
                                         "processingdb row), which gets its tables on first use")),
    Opt(("-R", "--rundir", "--outdir"), dict(dest="rundir", metavar="PATH",
                                             help="run directory (default: <appion_base>/<session>/<ddstack|ctf>/"
                                                  "<runname>)")),
    Opt(("-C", "--commit"), dict(dest="commit", action="store_true", default=True,
                                 help="write the results to the database (default)")),
    Opt(("--no-commit",), dict(dest="commit", action="store_false",
                               help="write no database rows (files are still written)")),
    Opt(("--expid", "--expId"), dict(dest="expid", type=int, metavar="#", help="the session, by its id (SessionData)")),
    Opt(("--nproc",), dict(type=int, metavar="#", help="worker processes on this machine (--cluster local)")),
    Opt(("--jobtype",), dict(metavar="X", help="job type recorded in ApAppionJobData (default: the program's)")),
    # SEMC Appion (nysbc/appion) additions
    Opt(("--jobid",), dict(type=int, metavar="#", help="SEMC Appion: the ApAppionJobData row the web interface made"),
        NoEffect("appion records the run's own ApAppionJobData row (status R, then D or E)")),
    Opt(("--clusterconfig",), dict(metavar="YAML", help="SEMC Appion: Dask cluster configuration file"),
        NoEffect("appion's Dask cluster is set by --cluster/--queue/--maximum and dask-jobqueue's jobqueue.yaml")),
    Opt(("--clean",), dict(dest="clean", action="store_true", default=True,
                           help="SEMC Appion: remove intermediate files (appion always does)")),
    Opt(("--no-clean",), dict(dest="clean", action="store_false", help="SEMC Appion: keep intermediate files"),
        NoEffect("appion keeps no intermediate files: each task's temporary files are removed when it finishes")),
)

# appionLoop2.setupGlobalParserOptions
LOOP = (
    Opt(("-s", "--sessionname", "--session"), dict(dest="sessionname", metavar="SESSION",
                                                  help="session name, e.g. 06mar12a")),
    Opt(("--preset",), dict(metavar="PRESET", help="only images of this preset, e.g. en or en-a-DW")),
    Opt(("-m", "--mrclist"), dict(dest="mrcnames", metavar="MRCNAME",
                                  help="only these images: comma-separated file names")),
    Opt(("--limit",), dict(type=int, metavar="#", help="process at most this many images")),
    Opt(("--tiltangle",), dict(default="all", choices=TILTS,
                               help="only images of these tilt angles (classic thresholds: notilt |a| <= 3 deg, "
                                    "hightilt >= 30, lowtilt < 30, minustilt < -2, plustilt > 2)")),
    Opt(("--startimgid",), dict(type=int, metavar="#", help="only images with this id or a later one")),
    Opt(("--endimgid",), dict(type=int, metavar="#", help="only images with this id or an earlier one")),
    Opt(("--continue",), dict(dest="continue_run", action="store_true", default=True,
                              help="skip images this run already did (default)")),
    Opt(("--no-continue",), dict(dest="continue_run", action="store_false", help="redo every image of the run")),
    Opt(("--background",), dict(action="store_true", default=False,
                                help="fewer messages: only warnings, errors and the summary")),
    Opt(("--no-wait",), dict(dest="wait", action="store_false", default=True,
                             help="stop when every image is done instead of waiting for new ones")),
    Opt(("--no-rejects",), dict(dest="norejects", action="store_true", default=False,
                                help="skip images hidden or trashed in the viewer or rejected in an assessment")),
    Opt(("--sib-assess",), dict(dest="sibassess", action="store_true", default=False,
                                help="use the assessment of the sibling image"),
        NoEffect("appion reads each image's own viewer status and assessment; there is no sibling-image lookup")),
    Opt(("--best-images",), dict(dest="bestimages", action="store_true", default=False,
                                 help="only images marked exemplar in the viewer or kept in an assessment")),
    Opt(("--shuffle",), dict(action="store_true", default=False, help="process the images out of order"),
        NoEffect("exposures are processed in arrival order (--reverse: newest first)")),
    Opt(("--reverse",), dict(action="store_true", default=False, help="process the newest images first")),
    Opt(("--parallel",), dict(action="store_true", default=False, help="run beside other processes of this run"),
        NoEffect("the loop always processes exposures in parallel on its Dask workers")),
)

# appionLoop2 options classic's DD loops remove (apDDLoop: parser.remove_option): CTF programs only.
IMAGE_CHOICE = (
    Opt(("--reprocess",), dict(type=float, metavar="CONFIDENCE",
                               help="only images whose best CTF fit so far (any run) has a confidence of at most "
                                    "this (or none); a run with this option redoes those fits")),
    Opt(("--uncorrected",), dict(action="store_true", default=False,
                                 help="estimate on the exposures' own images, not on motion-corrected sums (images "
                                      "made by a frame-alignment run are left out)")),
)

# appion's loop (not classic): how and where the work runs.
APPION = (
    Opt(("--cluster",), dict(default="local", choices=CLUSTERS, help="where tasks run (default: this machine)")),
    Opt(("--queue",), dict(help="batch clusters: the queue/partition")),
    Opt(("--maximum",), dict(type=int, help="batch clusters: at most this many jobs")),
    Opt(("--retries",), dict(type=int, default=2, help="retries of a failed image (default 2)")),
    Opt(("--idle",), dict(type=float, default=5.0, help="with --no-wait: seconds without new images before exit")),
    Opt(("--poll",), dict(type=float, default=2.0, help="seconds between looks for new images")),
    Opt(("--threads-per-task",), dict(type=int, default=1, help="cores one image's task may use")),
    Opt(("--dashboard-address",), dict(default=":8787", help="Dask dashboard address (':0': any free port)")),
)


def common_groups(*, image_choice: bool) -> tuple[Group, ...]:
    loop = LOOP + IMAGE_CHOICE if image_choice else LOOP
    return (("classic Appion run options", SCRIPT), ("classic Appion image loop", loop),
            ("appion loop (not classic)", APPION))


# ScriptParamName names classic gives the parameters appion names differently.
CLASSIC_PARAM_NAMES = {"continue_run": "continue"}
