"""Evaluating configs: cross-validation, its statistics and report, and the circuit diagnostics."""
