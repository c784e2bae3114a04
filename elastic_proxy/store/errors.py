"""Errors raised by the checkpoint store.

Callers (the agent, the CLI) tell these apart: a full disk is reported to the user with what to
free, a bad object only loses that one group, an integrity failure makes the restore fall back
to an older generation.
"""

from __future__ import annotations


class StoreError(Exception):
    """Any failure of the checkpoint store."""


class StoreFullError(StoreError):
    """The store's disk or quota is full (ENOSPC/EDQUOT); nothing partial was left behind."""


class StoreGoneError(StoreError):
    """A forked writer whose kernel has ended found the store's root deleted: the write is
    abandoned rather than bring the directory back."""


class SerializationError(StoreError):
    """An object could be pickled by neither cloudpickle nor dill (or unpickled back).

    `names` lists the variables at fault, `reasons` maps each to what the picklers said.
    """

    def __init__(self, message: str, names: tuple[str, ...] = (), reasons: dict[str, str] | None = None):
        super().__init__(message)
        self.names = names
        self.reasons = dict(reasons or {})


class IntegrityError(StoreError):
    """Stored bytes or a manifest failed verification; nothing from them was unpickled."""
