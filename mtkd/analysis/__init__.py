"""Diagnostics behind scripts/: teacher report, error correlation, fusion bounds, attribution, profiles, GPU check.
May import any layer (and tools); nothing in mtkd imports it but tools. Scripts and tests do."""
