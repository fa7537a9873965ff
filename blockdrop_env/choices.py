"""The one check for an argument that must be one of a few named choices, so that every such error
reads alike: ``split must be one of 'train', 'val', 'trainval', 'test'; got 'valid'``."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any, get_args


def check_choice(name: str, value: Any, choices: Any, *, none_ok: bool = False) -> Any:
    """``value`` if it is one of ``choices`` (a ``Literal`` type's values, or any collection such
    as a tuple or a dict's keys), or None when ``none_ok``; else a ValueError naming ``name``, every
    allowed value and ``value``."""
    allowed: Iterable[Any] = get_args(choices) or tuple(choices)
    if value is None and none_ok:
        return value
    # An unhashable value (a list, an array) is no choice; testing it with ``in`` could raise.
    if isinstance(value, Hashable) and value in allowed:
        return value
    listed = ", ".join(map(repr, allowed))
    raise ValueError(f"{name} must be {'None or ' if none_ok else ''}one of {listed}; got {value!r}")
