"""Corpora, the synthetic world, splits, direction categories and the language-code registry."""
