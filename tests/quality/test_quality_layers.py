"""The quality step keeps the layering rules: its worker side never imports Django, its declaration (read
for `appion loop --help`) imports nothing heavy, and the image check the motion task calls is numpy only."""
from tests.base.test_layers import _first_with, _imported_after

WORKER_MODULES = ("appion.base.imagecheck", "appion.quality.task", "appion.quality.inputs",
                  "appion.quality.calc.internal.tilt", "appion.quality.calc.internal.ice",
                  "appion.quality.calc.internal.motion", "appion.quality.calc.internal.verdict",
                  "appion.quality.curation")


def test_quality_worker_modules_do_not_import_django():
    found = _imported_after(*WORKER_MODULES)
    assert _first_with(found, "django") is None, f"{_first_with(found, 'django')} imports Django"


def test_declaration_and_image_check_are_light():
    found = _imported_after("appion.quality.step", "appion.base.imagecheck")
    assert found["appion.quality.step"] == []
    assert found["appion.base.imagecheck"] == ["numpy"]
