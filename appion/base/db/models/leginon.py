"""leginondata: what Leginon writes for every exposure (appion reads it; session import writes it)."""
from appion.base.db.fields import SinedonModel, boolean, integer, mrc, real, ref, ref_id, seq, subd, text

__all__ = ["UserData", "SessionData", "InstrumentData", "ScopeEMData", "CameraEMData", "PresetData",
           "PixelSizeCalibrationData", "CorrectorPlanData", "NormImageData", "DarkImageData",
           "AcquisitionImageData", "ViewerImageStatus", "SessionDoneLog"]


class LeginonModel(SinedonModel):
    SINEDON_MODULE = "leginondata"

    class Meta(SinedonModel.Meta):
        abstract = True


class UserData(LeginonModel):
    username = text()
    firstname = text()
    lastname = text()

    class Meta(LeginonModel.Meta):
        db_table = "UserData"


class SessionData(LeginonModel):
    name = text()
    user = ref("UserData", "user")
    image_path = text("image path")
    frame_path = text("frame path")
    comment = text()
    hidden = boolean()

    class Meta(LeginonModel.Meta):
        db_table = "SessionData"


class InstrumentData(LeginonModel):
    name = text()
    hostname = text()
    description = text()
    cs = real()  # spherical aberration in meters (TEMs)
    pixelmax = integer()

    class Meta(LeginonModel.Meta):
        db_table = "InstrumentData"


class ScopeEMData(LeginonModel):
    session = ref("SessionData", "session")
    tem = ref("InstrumentData", "tem")
    magnification = integer()
    defocus = real()  # meters, negative = underfocus
    high_tension = integer("high tension")  # volts
    stage_a = subd("stage position", "a", "float")  # tilt, radians
    stage_x = subd("stage position", "x", "float")
    stage_y = subd("stage position", "y", "float")
    stage_z = subd("stage position", "z", "float")

    class Meta(LeginonModel.Meta):
        db_table = "ScopeEMData"


class CameraEMData(LeginonModel):
    session = ref("SessionData", "session")
    ccdcamera = ref("InstrumentData", "ccdcamera")
    dimension_x = subd("dimension", "x")
    dimension_y = subd("dimension", "y")
    binning_x = subd("binning", "x")
    binning_y = subd("binning", "y")
    offset_x = subd("offset", "x")
    offset_y = subd("offset", "y")
    exposure_time = real("exposure time")  # ms
    nframes = integer()
    save_frames = boolean("save frames")
    align_frames = boolean("align frames")
    tiff_frames = boolean("tiff frames")
    eer_frames = boolean("eer frames")
    frame_time = real("frame time")  # ms
    frame_flip = boolean("frame flip")
    frame_rotate = integer("frame rotate")
    frames_name = text("frames name")
    use_frames = seq("use frames")

    class Meta(LeginonModel.Meta):
        db_table = "CameraEMData"


class PresetData(LeginonModel):
    session = ref("SessionData", "session")
    tem = ref("InstrumentData", "tem")
    ccdcamera = ref("InstrumentData", "ccdcamera")
    name = text()
    magnification = integer()
    defocus = real()
    dose = real()  # electrons per m² (÷1e20 for e/Å²)
    exposure_time = real("exposure time")
    dimension_x = subd("dimension", "x")
    dimension_y = subd("dimension", "y")
    binning_x = subd("binning", "x")
    binning_y = subd("binning", "y")
    offset_x = subd("offset", "x")
    offset_y = subd("offset", "y")
    save_frames = boolean("save frames")
    frame_time = real("frame time")

    class Meta(LeginonModel.Meta):
        db_table = "PresetData"


class PixelSizeCalibrationData(LeginonModel):
    session = ref("SessionData", "session")
    tem = ref("InstrumentData", "tem")
    ccdcamera = ref("InstrumentData", "ccdcamera")
    magnification = integer()
    pixelsize = real()  # meters, at binning 1
    comment = text()

    class Meta(LeginonModel.Meta):
        db_table = "PixelSizeCalibrationData"


class CorrectorPlanData(LeginonModel):
    session = ref("SessionData", "session")
    camera = ref("CameraEMData", "camera")
    bad_rows = seq("bad_rows")
    bad_cols = seq("bad_cols")
    bad_pixels = seq("bad_pixels")

    class Meta(LeginonModel.Meta):
        db_table = "CorrectorPlanData"


class _ReferenceImage(LeginonModel):
    session = ref("SessionData", "session")
    camera = ref("CameraEMData", "camera")
    scope = ref("ScopeEMData", "scope")
    image = mrc("image")
    filename = text()
    channel = integer()

    class Meta(LeginonModel.Meta):
        abstract = True


class NormImageData(_ReferenceImage):
    class Meta(LeginonModel.Meta):
        db_table = "NormImageData"


class DarkImageData(_ReferenceImage):
    class Meta(LeginonModel.Meta):
        db_table = "DarkImageData"


class AcquisitionImageData(LeginonModel):
    session = ref("SessionData", "session")
    image = mrc("image")
    filename = text()
    label = text()
    scope = ref("ScopeEMData", "scope")
    camera = ref("CameraEMData", "camera")
    corrector_plan = ref("CorrectorPlanData", "corrector plan")
    dark = ref("DarkImageData", "dark")
    norm = ref("NormImageData", "norm")
    bright = ref_id("BrightImageData", "bright")
    use_frames = seq("use frames")
    preset = ref("PresetData", "preset")
    target = ref_id("AcquisitionImageTargetData", "target")
    version = integer()
    phase_plate = ref_id("PhasePlateUsageData", "phase plate")

    class Meta(LeginonModel.Meta):
        db_table = "AcquisitionImageData"


class ViewerImageStatus(LeginonModel):
    session = ref("SessionData", "session")
    image = ref("AcquisitionImageData", "image")
    status = text()  # hidden | trash | exemplar

    class Meta(LeginonModel.Meta):
        db_table = "ViewerImageStatus"


class SessionDoneLog(LeginonModel):
    session = ref("SessionData", "session")
    done = boolean()

    class Meta(LeginonModel.Meta):
        db_table = "SessionDoneLog"
