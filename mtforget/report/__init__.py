"""Summaries, tables and plots built from a study's results."""
