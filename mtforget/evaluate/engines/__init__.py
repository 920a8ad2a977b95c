"""Generation engines: one interface (:class:`~mtforget.evaluate.engines.base.GenerationEngine`)
over the ways a model can decode, chosen by name through a registry
(:mod:`mtforget.evaluate.engines.registry`) by
:func:`~mtforget.evaluate.engines.base.make_engine`.

Adding an engine takes a module here that defines ``ENGINE`` (an
:class:`~mtforget.evaluate.engines.base.EngineSpec`) and one line in the registry. This
``__init__`` and the registry import no PyTorch, so a study's config can be validated against the
registered names in a process that never loads a model.
"""
