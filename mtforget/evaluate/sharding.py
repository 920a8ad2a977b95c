"""Evaluation shared by the processes of one launch (``accelerate launch``, torchrun).

Every evaluation translates through :func:`translate_shared`: the engine plans its length-sorted
batches once over all the rows (:meth:`~mtforget.evaluate.engines.base.GenerationEngine.plan_batches`),
process ``r`` of ``n`` decodes batches ``r, r + n, r + 2n …`` (long and short ones alike), and
every process receives all the translations. A batch is decoded whole by one process with the
same rows in the same order whatever the number of processes, so each sentence gets the same
padding and the same arithmetic: the outputs are those of one process, bit for bit. A single
process takes the same path, with every batch.

Each process must reach the same evaluations in the same order, with the same rows: the
collective calls pair up by order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mtforget.evaluate.engines.base import GenerationEngine
from mtforget.evaluate.generate import Job, job_rows


@dataclass(frozen=True)
class EvalGroup:
    """The processes that share an evaluation: this one's ``rank`` among ``size``."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process scores and records (the first)."""
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        """The main process's ``obj``, on every process."""
        if self.size == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj])[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order, on every process."""
        if self.size == 1:
            return [obj]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.size
        dist.all_gather_object(gathered, obj)
        return gathered


ALONE = EvalGroup()


def launch_group() -> EvalGroup:
    """The processes launched together with this one, or :data:`ALONE` when it runs by itself."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ALONE
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return EvalGroup(state.process_index, state.num_processes) if state.num_processes > 1 else ALONE


def translate_shared(engine: GenerationEngine, jobs: list[Job], group: EvalGroup = ALONE,
                     progress: Callable[[int], None] | None = None) -> list[list[str]]:
    """Every job's translations (each in its input order) on every process of ``group``, each
    process decoding its share of the engine's batches; ``progress`` counts this process's rows.

    An engine that cannot plan its batches translates everything on every process.
    """
    rows = job_rows(jobs)
    batches = None
    if group.is_main:
        try:
            batches = engine.plan_batches(rows)
        except NotImplementedError:
            pass
    # The main process's plan: on a GPU batch sizes follow the free memory, which differs by process.
    batches = group.broadcast(batches)
    if batches is None:
        return engine.translate_many(jobs, progress=progress)
    done: dict[int, str] = {}
    for batch in batches[group.rank :: group.size]:
        outputs = engine.translate_batch([rows[i] for i in batch])
        done.update(zip(batch, outputs))
        if progress is not None:
            progress(len(batch))
    for part in group.all_gather(done) if group.size > 1 else ():
        done.update(part)
    results, offset = [], 0
    for texts, _, _ in jobs:
        results.append([done[i] for i in range(offset, offset + len(texts))])
        offset += len(texts)
    return results
