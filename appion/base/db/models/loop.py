"""Appion-side tables of the processing loop (classic Appion has none: it kept a pickle per run).

ApLoopRunData is one loop run (its steps, parameter hash and the classic run rows it writes);
ApLoopExposureData is one exposure × step of that run: how often it was tried, its state and
last error, so a restart neither redoes finished work nor retries a hopeless movie forever, and
`appion status` can say what failed and why.  Times are Unix seconds (floats), so latency and
rates need no timezone handling.
"""
from appion.base.db.fields import SinedonModel, boolean, integer, real, ref, text

__all__ = ["ApLoopRunData", "ApLoopExposureData", "ApLoopStepRunData"]

L = "leginondata"

# ApLoopExposureData.status values
QUEUED, RUNNING, RETRY, DONE, FAILED = "queued", "running", "retry", "done", "failed"


class ApLoopRunData(SinedonModel):
    """A loop run: steps 'motion,ctf' over one session, with the classic runs it fills."""

    runname = text()
    session = ref("SessionData", "session", module=L)
    steps = text()  # comma-separated step names, in order
    params_hash = text()  # hash of everything that changes results (resume only with the same)
    params = text()  # JSON of the parameters, for people
    path = ref("ApPathData", "path")
    ddstackrun = ref("ApDDStackRunData", "ddstackrun")
    acerun = ref("ApAceRunData", "acerun")
    status = text()  # R running, D done, E error (as ApAppionJobData)
    hostname = text()
    pid = integer()
    started = real()  # Unix seconds
    heartbeat = real()  # Unix seconds, updated while running
    dashboard = text()  # the Dask dashboard address (URL), or why there is none

    class Meta(SinedonModel.Meta):
        db_table = "ApLoopRunData"


class ApLoopExposureData(SinedonModel):
    """One exposure and step of a loop run; updated in place as attempts come and go."""

    looprun = ref("ApLoopRunData", "looprun")
    image = ref("AcquisitionImageData", "image", module=L)
    step = text()
    status = text()  # queued | running | retry | done | failed
    attempts = integer()  # attempts that ended in an error
    last_error = text()
    arrived = real()  # when the exposure was registered (Unix seconds)
    submitted = real()  # last submission
    finished = real()  # done or permanently failed
    seconds = real()  # compute time of the successful attempt
    retry_after = real()  # earliest time of the next attempt
    worker = text()

    class Meta(SinedonModel.Meta):
        db_table = "ApLoopExposureData"


class ApLoopStepRunData(SinedonModel):
    """One step of a loop run: the step's own run row (e.g. ApDDStackRunData) and the memo key it answers to.

    A later loop run of the same session whose step has the same memo key (parameters, engine and
    program versions, appion version, upstream steps' keys) reuses that step run's results instead of
    recomputing them: its row then points at the same run_id with `reused` set.
    """

    looprun = ref("ApLoopRunData", "looprun")
    session = ref("SessionData", "session", module=L)
    step = text()
    memo_key = text()
    run_id = integer()  # DEF_id of the step's own run row (table chosen by the step)
    rundir = text()
    settings = text()  # JSON of the step's settings, for people
    versions = text()  # JSON: engine program version, appion version
    reused = boolean()  # True when the results come from an earlier loop run's step run

    class Meta(SinedonModel.Meta):
        db_table = "ApLoopStepRunData"
