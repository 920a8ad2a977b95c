"""Corpora, the synthetic world, splits and direction categories."""
