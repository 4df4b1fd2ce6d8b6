"""Table and column names introspected from the created database equal sinedon's.

The expected names are written out here by hand from Leginon's/Appion's conventions
(shared/reference/classic-appion.md), not derived from the models, so a renamed field fails.
Runs on SQLite in-process and on MariaDB through tests/base/test_mariadb.py.
"""
import pytest
from django.db import connections

from appion.base.db.router import alias_for
from appion.base.db.schema import all_models

COMMON = ["DEF_id", "DEF_timestamp"]
EXPECTED = {
    "UserData": ["username", "firstname", "lastname"],
    "SessionData": ["name", "REF|UserData|user", "image path", "frame path", "comment", "hidden"],
    "InstrumentData": ["name", "hostname", "description", "cs", "pixelmax"],
    "ScopeEMData": ["REF|SessionData|session", "REF|InstrumentData|tem", "magnification", "defocus", "high tension",
                    "SUBD|stage position|a", "SUBD|stage position|x", "SUBD|stage position|y", "SUBD|stage position|z"],
    "CameraEMData": ["REF|SessionData|session", "REF|InstrumentData|ccdcamera", "SUBD|dimension|x", "SUBD|dimension|y",
                     "SUBD|binning|x", "SUBD|binning|y", "SUBD|offset|x", "SUBD|offset|y", "exposure time", "nframes",
                     "save frames", "align frames", "tiff frames", "eer frames", "frame time", "frame flip",
                     "frame rotate", "frames name", "SEQ|use frames"],
    "PresetData": ["REF|SessionData|session", "REF|InstrumentData|tem", "REF|InstrumentData|ccdcamera", "name",
                   "magnification", "defocus", "dose", "exposure time", "SUBD|dimension|x", "SUBD|dimension|y",
                   "SUBD|binning|x", "SUBD|binning|y", "SUBD|offset|x", "SUBD|offset|y", "save frames", "frame time"],
    "PixelSizeCalibrationData": ["REF|SessionData|session", "REF|InstrumentData|tem", "REF|InstrumentData|ccdcamera",
                                 "magnification", "pixelsize", "comment"],
    "CorrectorPlanData": ["REF|SessionData|session", "REF|CameraEMData|camera", "SEQ|bad_rows", "SEQ|bad_cols",
                          "SEQ|bad_pixels"],
    "NormImageData": ["REF|SessionData|session", "REF|CameraEMData|camera", "REF|ScopeEMData|scope", "MRC|image",
                      "filename", "channel"],
    "DarkImageData": ["REF|SessionData|session", "REF|CameraEMData|camera", "REF|ScopeEMData|scope", "MRC|image",
                      "filename", "channel"],
    "AcquisitionImageData": ["REF|SessionData|session", "MRC|image", "filename", "label", "REF|ScopeEMData|scope",
                             "REF|CameraEMData|camera", "REF|CorrectorPlanData|corrector plan",
                             "REF|DarkImageData|dark", "REF|NormImageData|norm", "REF|BrightImageData|bright",
                             "SEQ|use frames", "REF|PresetData|preset", "REF|AcquisitionImageTargetData|target",
                             "version", "REF|PhasePlateUsageData|phase plate"],
    "ViewerImageStatus": ["REF|SessionData|session", "REF|AcquisitionImageData|image", "status"],
    "SessionDoneLog": ["REF|SessionData|session", "done"],
    "projects": ["name", "short_description"],
    "processingdb": ["REF|projects|project", "appiondb"],
    "projectexperiments": ["REF|projects|project", "REF|leginondata|SessionData|session"],
    "ApPathData": ["path"],
    "ApAppionJobData": ["name", "REF|ApPathData|path", "cluster", "REF|ApPathData|clusterpath", "jobtype", "status",
                        "user", "clusterjobid", "REF|leginondata|SessionData|session"],
    "ScriptProgramName": ["name"],
    "ScriptUserName": ["name", "uid", "gid", "fullname"],
    "ScriptHostName": ["name", "ip", "system", "distro", "arch"],
    "ScriptProgramRun": ["runname", "REF|ScriptProgramName|progname", "REF|ScriptUserName|username",
                         "REF|ScriptHostName|hostname", "REF|ApPathData|rundir", "REF|ApAppionJobData|job",
                         "REF|ApPathData|appion_path", "REF|leginondata|SessionData|session", "revision", "unixshell"],
    "ScriptParamName": ["name", "REF|ScriptProgramName|progname"],
    "ScriptParamValue": ["value", "usage", "REF|ScriptParamName|paramname", "REF|ScriptProgramRun|progrun"],
    "ApDDStackParamsData": ["REF|leginondata|PresetData|preset", "align", "bin", "method"],
    "ApDDStackRunData": ["runname", "REF|ApDDStackParamsData|params", "REF|leginondata|SessionData|session",
                         "REF|ApPathData|path"],
    "ApDDAlignImagePairData": ["REF|leginondata|AcquisitionImageData|source",
                               "REF|leginondata|AcquisitionImageData|result", "REF|ApDDStackRunData|ddstackrun"],
    "ApDDFrameTrajectoryData": ["REF|leginondata|AcquisitionImageData|image", "REF|ApDDStackRunData|ddstackrun",
                                "SEQ|pos_x", "SEQ|pos_y", "last_x", "last_y", "number_of_positions", "reference_index"],
    "ApDDAlignStatsData": ["REF|leginondata|AcquisitionImageData|image", "REF|ApDDStackRunData|ddstackrun",
                           "REF|ApDDFrameTrajectoryData|trajectory", "apix", "top_shift1_value", "top_shift1_index",
                           "top_shift2_value", "top_shift2_index", "top_shift3_value", "top_shift3_index",
                           "median_shift_value"],
    "ApCtfFind4ParamsData": ["bestdb", "ampcontrast", "fieldsize", "cs", "resmin", "defstep", "shift_phase",
                             "min_phase_shift", "max_phase_shift", "phase_search_step"],
    "ApAceRunData": ["name", "REF|leginondata|SessionData|session", "REF|ApPathData|path", "hidden",
                     "REF|ApCtfFind4ParamsData|ctffind4_params"],
    "ApCtfData": ["REF|ApAceRunData|acerun", "REF|leginondata|AcquisitionImageData|image", "cs", "defocusinit",
                  "amplitude_contrast", "defocus1", "defocus2", "angle_astigmatism", "extra_phase_shift",
                  "cross_correlation", "ctffind4_resolution", "confidence", "confidence_d", "confidence_30_10",
                  "confidence_5_peak", "resolution_80_percent", "resolution_50_percent", "graph1", "graph2", "graph3",
                  "graph4"],
    "ApAssessmentRunData": ["name", "REF|leginondata|SessionData|session"],
    "ApAssessmentData": ["REF|ApAssessmentRunData|assessmentrun", "REF|leginondata|AcquisitionImageData|image",
                         "selectionkeep"],
}


def _introspect(model):
    conn = connections[alias_for(model)]
    with conn.cursor() as cur:
        tables = set(conn.introspection.table_names(cur))
        assert model._meta.db_table in tables, f"table {model._meta.db_table} was not created"
        return [c.name for c in conn.introspection.get_table_description(cur, model._meta.db_table)]


@pytest.mark.parametrize("table", sorted(EXPECTED))
def test_classic_table_has_sinedon_columns(appion_db, table):
    model = next((m for m in all_models() if m._meta.db_table == table), None)
    assert model is not None, f"no model for classic table {table}"
    assert _introspect(model) == COMMON + EXPECTED[table]


def test_every_model_is_listed_or_appion_side(appion_db):
    """New Appion-side tables may exist, but every model's columns follow sinedon conventions."""
    for model in all_models():
        cols = _introspect(model)
        assert cols[:2] == COMMON, model
        for c in cols:
            if c.startswith("REF|"):
                assert len(c.split("|")) in (3, 4), c
        for f in model._meta.concrete_fields:
            if f.is_relation:
                assert f.column.startswith("REF|"), (model, f.column)


def test_classic_tables_are_in_their_databases(appion_db):
    """leginondata / projectdata / appiondata tables are routed to separate databases on MySQL."""
    aliases = {m._meta.db_table: alias_for(m) for m in all_models()}
    if appion_db.embedded:
        assert set(aliases.values()) == {"default"}
    else:
        assert aliases["SessionData"] == "default"
        assert aliases["processingdb"] == "project"
        assert aliases["ApCtfData"] == "appion"
