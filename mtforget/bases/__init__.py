"""Base models a study starts from: the recipes that build, pre-train and cache the built-in tiny
bases (:mod:`mtforget.bases.tiny`).

This package sits above :mod:`mtforget.models` and :mod:`mtforget.train`: a recipe builds a
model and pre-trains it with the training loop, which the model code itself must not depend on.
Its ``__init__`` and :mod:`mtforget.bases.specs` import no PyTorch, so the process that expands a
study's grid can read a base's recipe.
"""
