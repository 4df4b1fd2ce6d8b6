"""Appion-side tables of the quality step (classic Appion has no place for these metrics).

ApQualityRunData is one quality step run; ApQualityData one exposure's metrics and the automatic verdict
under the thresholds then in force; ApQualityVerdictData a person's accept/reject of an exposure (the
newest one wins over any automatic verdict).  The rejected exposures are also hidden in Leginon's
ViewerImageStatus, so the classic viewer hides them too.  Units are in the column names (Å, degrees).
"""
from appion.base.db.fields import SinedonModel, boolean, real, ref, text

__all__ = ["ApQualityRunData", "ApQualityData", "ApQualityVerdictData"]

L = "leginondata"


class ApQualityRunData(SinedonModel):
    runname = text()
    session = ref("SessionData", "session", module=L)
    path = ref("ApPathData", "path")
    params = text()  # JSON of the step's hashed settings (tiles, amplitude contrast, command-line thresholds)

    class Meta(SinedonModel.Meta):
        db_table = "ApQualityRunData"


class ApQualityData(SinedonModel):
    """One exposure's quality metrics and automatic verdict; written once per run and exposure."""

    qualityrun = ref("ApQualityRunData", "qualityrun")
    image = ref("AcquisitionImageData", "image", module=L)  # the exposure (movie)
    measured_image = ref("AcquisitionImageData", "measured_image", module=L)  # the image measured (aligned sum)
    total_drift_A = real()
    early_drift_A = real()  # path length while the accumulated dose is ≤ 4 e/Å²
    late_drift_A = real()
    ctf_resolution_A = real()
    astigmatism_A = real()  # |defocus1 − defocus2|
    defocus_A = real()  # mean defocus, positive = underfocus
    tilt_deg = real()
    tilt_axis_deg = real()  # counter-clockwise from x; defocus grows towards axis + 90°
    ice_thickness = real()  # relative (1 = no water ring), cryoSPARC's definition
    crystalline_ice = boolean()
    image_problem = text()  # why the image is unusable (appion.base.imagecheck), else NULL
    notes = text()  # why a metric is missing, crystalline-ice evidence
    rejected = boolean()
    reason = text()  # every failed limit, '; '-joined (NULL when accepted)
    thresholds = text()  # JSON of the thresholds in force when judged

    class Meta(SinedonModel.Meta):
        db_table = "ApQualityData"


class ApQualityVerdictData(SinedonModel):
    """A person's verdict on an exposure (from the exposure page); the newest per image wins."""

    session = ref("SessionData", "session", module=L)
    image = ref("AcquisitionImageData", "image", module=L)
    accepted = boolean()
    reason = text()
    user = text()

    class Meta(SinedonModel.Meta):
        db_table = "ApQualityVerdictData"
