"""Reaching the Hugging Face Hub: fail in a second with a clear line when it cannot be reached.

The hub client retries a failed connection for about half a minute before giving up; a user who
named a model or dataset while offline should hear at once what is wrong and what to do.
"""

from __future__ import annotations

import os

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
