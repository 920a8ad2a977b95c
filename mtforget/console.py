"""What the libraries print, quieted so a study's own progress and messages stay readable."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    """Silence the library output a study does not need, in this process.

    The CLI calls it, and so does every worker process, which would otherwise interleave weight
    save/load bars and checkpoint notices with the study's progress bar.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    # Accelerate warns at every checkpoint that tied embeddings are stored once; that is expected.
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # peft still asks transformers for a renamed attribute; nothing a user can act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
