"""Reporting, not NAS: aggregation of sweeps (tables, paired statistics) and plots."""
