"""Reaching the Hugging Face Hub: fail in a second with a clear line when it cannot be reached.

The hub client retries a failed connection for about half a minute before giving up; a user who
named a model or dataset while offline should hear at once what is wrong and what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

from mtforget.errors import UsageError

PROBE_TIMEOUT_S = 5.0


def hub_unreachable_reason() -> str | None:
    """Why the hub cannot be reached now (offline mode set, or one request without retries
    failing), or None when it answers."""
    import huggingface_hub
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"  # the client will not try, so nothing else needs asking
    try:
        huggingface_hub.get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - any network failure means the same to the user
        return f"{constants.ENDPOINT} cannot be reached: {str(exc).strip() or type(exc).__name__}"
    return None


def require_hub(key: str, name: str) -> None:
    """Raise a :class:`UsageError` naming ``key`` when ``name`` would need a hub that cannot be reached."""
    reason = hub_unreachable_reason()
    if reason:
        raise UsageError(f"{key}: {name!r} is not a local path and not in the local Hugging Face cache, and the hub "
                         f"cannot be reached ({reason}); give a local directory, or download it where the hub is "
                         "reachable (hf download) so that it is in the cache")


def resolve_revision(name: str, revision: str | None, key: str = "model.revision") -> str:
    """The commit that ``revision`` (a branch, tag or commit; None: the default branch) of hub
    model ``name`` stands for: from the local Hugging Face cache when it holds it, else from the
    hub. A hub model's identity is its commit, so a branch that moved on is a new base."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        # Only config.json: the snapshot folder that the cache resolves the revision to is named by its commit.
        folder = huggingface_hub.snapshot_download(name, revision=revision, local_files_only=True,
                                                   allow_patterns=["config.json"])
        return Path(folder).name
    except LocalEntryNotFoundError:
        pass
    require_hub("model.path", name)
    try:
        return huggingface_hub.HfApi().model_info(name, revision=revision).sha
    except Exception as exc:  # noqa: BLE001 - an unknown id or revision is the user's to fix
        raise UsageError(f"{key}: cannot resolve {revision or 'the default branch'} of {name!r} "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
