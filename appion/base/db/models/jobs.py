"""Appion-side tables for refinement preparation and cluster-job lifecycles.

Stacks and initial models are named like classic Appion's (ApStackData, ApInitialModelData,
ApPrepRefineData, ApPrepRefineStackData, ApPrepRefineModelData), reduced to the columns this
project writes.  The lifecycle (ApJobLifecycleData, one per ApAppionJobData) holds the
current state and the job's parameters; ApJobTransitionData keeps every step, so a tracker
restarted mid-run carries on from the stored state.
"""
from appion.base.db.fields import SinedonModel, integer, real, ref, text, boolean

__all__ = ["ApStackData", "ApInitialModelData", "ApPrepRefineData", "ApPrepRefineStackData", "ApPrepRefineModelData",
           "ApJobLifecycleData", "ApJobTransitionData"]

L = "leginondata"


class ApStackData(SinedonModel):
    """A particle stack file (MRC stack) known to appion."""

    name = text()  # file name inside path
    path = ref("ApPathData", "path")
    description = text()
    pixelsize = real()  # Å
    boxsize = integer()
    numpart = integer()
    hidden = boolean()

    class Meta(SinedonModel.Meta):
        db_table = "ApStackData"


class ApInitialModelData(SinedonModel):
    """An initial 3D model (MRC volume)."""

    name = text()
    path = ref("ApPathData", "path")
    description = text()
    pixelsize = real()  # Å
    boxsize = integer()
    symmetry = text()
    hidden = boolean()

    class Meta(SinedonModel.Meta):
        db_table = "ApInitialModelData"


class ApPrepRefineData(SinedonModel):
    """A prepared refinement: method plus the run directory holding its prepared inputs."""

    name = text()  # run name
    path = ref("ApPathData", "path")
    method = text()  # emanrecon, frealignrecon, relionrecon, xmipprecon, xmippml3d
    description = text()
    stack = ref("ApStackData", "stack")
    model = ref("ApInitialModelData", "model")
    session = ref("SessionData", "session", module=L)
    hidden = boolean()

    class Meta(SinedonModel.Meta):
        db_table = "ApPrepRefineData"


class ApPrepRefineStackData(SinedonModel):
    preprefine = ref("ApPrepRefineData", "preprefine")
    stackref = ref("ApStackData", "stackref")
    filename = text()  # prepared stack (or its STAR/metadata file) inside the run directory
    last_part = integer()
    lowpass = real()  # Å
    highpass = real()  # Å
    bin = integer()
    apix = real()  # Å per pixel after binning
    boxsize = integer()  # after binning
    format = text()

    class Meta(SinedonModel.Meta):
        db_table = "ApPrepRefineStackData"


class ApPrepRefineModelData(SinedonModel):
    preprefine = ref("ApPrepRefineData", "preprefine")
    refmodel = ref("ApInitialModelData", "refmodel")
    filename = text()
    lowpass = real()
    apix = real()
    boxsize = integer()
    format = text()

    class Meta(SinedonModel.Meta):
        db_table = "ApPrepRefineModelData"


class ApJobLifecycleData(SinedonModel):
    """Where a cluster job is in its life (one row per ApAppionJobData, updated in place)."""

    job = ref("ApAppionJobData", "job")
    state = text()  # appion.base.jobstates.JobState value
    reason = text()  # why it is in this state (FAILED: what went wrong)
    jobtype = text()
    host = text()  # processing host name from the site config
    rundir = text()
    runname = text()
    params = text()  # job parameters as JSON (to build the next cycle)
    cycle = integer()  # 1 for the first submission, +1 per extra cycle
    finished_at = real()  # epoch seconds when it became COMPLETED or FAILED (ages count from here)
    updated_at = real()  # epoch seconds of the last transition

    class Meta(SinedonModel.Meta):
        db_table = "ApJobLifecycleData"


class ApJobTransitionData(SinedonModel):
    """One stored step of a job's lifecycle."""

    lifecycle = ref("ApJobLifecycleData", "lifecycle")
    from_state = text()
    to_state = text()
    reason = text()
    cycle = integer()
    clusterjobid = integer()
    at = real()  # epoch seconds

    class Meta(SinedonModel.Meta):
        db_table = "ApJobTransitionData"
