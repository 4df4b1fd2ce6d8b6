"""Motion correction of dose-fractionated movies."""
