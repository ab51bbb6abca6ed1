"""Imports every study module, so that each registers itself in STUDIES (one line per study)."""
