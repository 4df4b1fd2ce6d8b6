"""appiondata: what classic Appion writes per project (and so what its web viewer reads)."""
from appion.base.db.fields import SinedonModel, boolean, integer, real, ref, seq, text

__all__ = ["ApPathData", "ApAppionJobData", "ScriptProgramName", "ScriptUserName", "ScriptHostName",
           "ScriptProgramRun", "ScriptParamName", "ScriptParamValue", "ApDDStackParamsData", "ApDDStackRunData",
           "ApDDAlignImagePairData", "ApDDFrameTrajectoryData", "ApDDAlignStatsData", "ApCtfFind4ParamsData",
           "ApAceRunData", "ApCtfData", "ApAssessmentRunData", "ApAssessmentData"]

L = "leginondata"


class ApPathData(SinedonModel):
    path = text()

    class Meta(SinedonModel.Meta):
        db_table = "ApPathData"


class ApAppionJobData(SinedonModel):
    """A job classic Appion knows about; status Q queued, R running, D done, E error."""

    name = text()
    path = ref("ApPathData", "path")
    cluster = text()
    clusterpath = ref("ApPathData", "clusterpath")
    jobtype = text()
    status = text()
    user = text()
    clusterjobid = integer()
    session = ref("SessionData", "session", module=L)

    class Meta(SinedonModel.Meta):
        db_table = "ApAppionJobData"


class ScriptProgramName(SinedonModel):
    name = text()

    class Meta(SinedonModel.Meta):
        db_table = "ScriptProgramName"


class ScriptUserName(SinedonModel):
    name = text()
    uid = integer()
    gid = integer()
    fullname = text()

    class Meta(SinedonModel.Meta):
        db_table = "ScriptUserName"


class ScriptHostName(SinedonModel):
    name = text()
    ip = text()
    system = text()
    distro = text()
    arch = text()

    class Meta(SinedonModel.Meta):
        db_table = "ScriptHostName"


class ScriptProgramRun(SinedonModel):
    runname = text()
    progname = ref("ScriptProgramName", "progname")
    username = ref("ScriptUserName", "username")
    hostname = ref("ScriptHostName", "hostname")
    rundir = ref("ApPathData", "rundir")
    job = ref("ApAppionJobData", "job")
    appion_path = ref("ApPathData", "appion_path")
    session = ref("SessionData", "session", module=L)
    revision = text()
    unixshell = text()

    class Meta(SinedonModel.Meta):
        db_table = "ScriptProgramRun"


class ScriptParamName(SinedonModel):
    name = text()
    progname = ref("ScriptProgramName", "progname")

    class Meta(SinedonModel.Meta):
        db_table = "ScriptParamName"


class ScriptParamValue(SinedonModel):
    value = text()
    usage = text()
    paramname = ref("ScriptParamName", "paramname")
    progrun = ref("ScriptProgramRun", "progrun")

    class Meta(SinedonModel.Meta):
        db_table = "ScriptParamValue"


class ApDDStackParamsData(SinedonModel):
    preset = ref("PresetData", "preset", module=L)
    align = boolean()
    bin = integer()
    method = text()

    class Meta(SinedonModel.Meta):
        db_table = "ApDDStackParamsData"


class ApDDStackRunData(SinedonModel):
    runname = text()
    params = ref("ApDDStackParamsData", "params")
    session = ref("SessionData", "session", module=L)
    path = ref("ApPathData", "path")

    class Meta(SinedonModel.Meta):
        db_table = "ApDDStackRunData"


class ApDDAlignImagePairData(SinedonModel):
    """Written last for each movie: its presence means the movie is done for that run."""

    source = ref("AcquisitionImageData", "source", module=L)
    result = ref("AcquisitionImageData", "result", module=L)
    ddstackrun = ref("ApDDStackRunData", "ddstackrun")

    class Meta(SinedonModel.Meta):
        db_table = "ApDDAlignImagePairData"


class ApDDFrameTrajectoryData(SinedonModel):
    image = ref("AcquisitionImageData", "image", module=L)
    ddstackrun = ref("ApDDStackRunData", "ddstackrun")
    pos_x = seq("pos_x")
    pos_y = seq("pos_y")
    last_x = real()
    last_y = real()
    number_of_positions = integer()
    reference_index = integer()

    class Meta(SinedonModel.Meta):
        db_table = "ApDDFrameTrajectoryData"


class ApDDAlignStatsData(SinedonModel):
    image = ref("AcquisitionImageData", "image", module=L)
    ddstackrun = ref("ApDDStackRunData", "ddstackrun")
    trajectory = ref("ApDDFrameTrajectoryData", "trajectory")
    apix = real()
    top_shift1_value = real()
    top_shift1_index = integer()
    top_shift2_value = real()
    top_shift2_index = integer()
    top_shift3_value = real()
    top_shift3_index = integer()
    median_shift_value = real()

    class Meta(SinedonModel.Meta):
        db_table = "ApDDAlignStatsData"


class ApCtfFind4ParamsData(SinedonModel):
    bestdb = boolean()
    ampcontrast = real()
    fieldsize = integer()
    cs = real()
    resmin = real()
    defstep = real()
    shift_phase = boolean()
    min_phase_shift = real()
    max_phase_shift = real()
    phase_search_step = real()

    class Meta(SinedonModel.Meta):
        db_table = "ApCtfFind4ParamsData"


class ApAceRunData(SinedonModel):
    name = text()
    session = ref("SessionData", "session", module=L)
    path = ref("ApPathData", "path")
    hidden = boolean()
    ctffind4_params = ref("ApCtfFind4ParamsData", "ctffind4_params")

    class Meta(SinedonModel.Meta):
        db_table = "ApAceRunData"


class ApCtfData(SinedonModel):
    """One CTF estimate: meters, positive underfocus, |defocus1| ≤ |defocus2|, angle in (−90, 90]."""

    acerun = ref("ApAceRunData", "acerun")
    image = ref("AcquisitionImageData", "image", module=L)
    cs = real()
    defocusinit = real()
    amplitude_contrast = real()
    defocus1 = real()
    defocus2 = real()
    angle_astigmatism = real()
    extra_phase_shift = real()
    cross_correlation = real()
    ctffind4_resolution = real()
    confidence = real()
    confidence_d = real()
    confidence_30_10 = real()
    confidence_5_peak = real()
    resolution_80_percent = real()
    resolution_50_percent = real()
    graph1 = text()
    graph2 = text()
    graph3 = text()
    graph4 = text()

    class Meta(SinedonModel.Meta):
        db_table = "ApCtfData"


class ApAssessmentRunData(SinedonModel):
    name = text()
    session = ref("SessionData", "session", module=L)

    class Meta(SinedonModel.Meta):
        db_table = "ApAssessmentRunData"


class ApAssessmentData(SinedonModel):
    """A reviewer's keep/reject of an image; selectionkeep False means rejected."""

    assessmentrun = ref("ApAssessmentRunData", "assessmentrun")
    image = ref("AcquisitionImageData", "image", module=L)
    selectionkeep = boolean()

    class Meta(SinedonModel.Meta):
        db_table = "ApAssessmentData"
