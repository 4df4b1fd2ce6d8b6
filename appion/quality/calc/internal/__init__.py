"""Pure numerics of the quality step: sample tilt from per-tile defocus (tilt), relative ice thickness and
crystalline ice (ice), early/late drift (motion), thresholds and verdicts (verdict).  numpy/scipy only, no I/O."""
