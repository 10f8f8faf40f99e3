r"""The pattern language that selects parameters by their ``named_parameters()`` names.

A pattern is one of

* an fnmatch-style glob matched against the *whole* parameter name, case-sensitive:
  ``*`` matches any run of characters including dots, ``?`` one character, ``[abc]`` a set.
  ``"encoders.rgb.*"`` selects every parameter of the ``rgb`` encoder; ``"*.bias"`` every bias.
* a regular expression prefixed with ``re:``, matched with :func:`re.fullmatch`:
  ``"re:encoders\\.(rgb|depth)\\.layer[34]\\..*"``.

Several patterns select the union of what each matches. The same language is used by
:class:`~mslightning.optim.ParamGroup` and by :class:`~mslightning.callbacks.StreamMonitor`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

__all__ = [
    "Patterns",
    "as_pattern_list",
    "assign_owners",
    "compile_patterns",
    "describe_names",
    "matches_any",
    "select_names",
]

Patterns = str | Sequence[str]
"""One pattern or a sequence of patterns."""

REGEX_PREFIX = "re:"


def as_pattern_list(patterns: Patterns) -> list[str]:
    """Normalise one pattern or several into a list.

    Args:
        patterns: A pattern string or a sequence of pattern strings.

    Returns:
        The patterns as a new list.

    Raises:
        ValueError: If no pattern is given, or a pattern is empty or not a string.
    """
    pattern_list = [patterns] if isinstance(patterns, str) else list(patterns)
    if not pattern_list:
        raise ValueError("Expected at least one parameter-name pattern, got an empty list.")
    for pattern in pattern_list:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"A parameter-name pattern must be a non-empty string, got {pattern!r}.")
    return pattern_list


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str]:
    if pattern.startswith(REGEX_PREFIX):
        try:
            return re.compile(pattern[len(REGEX_PREFIX) :])
        except re.error as err:
            raise ValueError(f"Invalid regular expression in pattern {pattern!r}: {err}") from err
    # fnmatch.translate anchors at the end; fullmatch below anchors at the start too.
    return re.compile(fnmatch.translate(pattern))


def compile_patterns(patterns: Patterns) -> list[re.Pattern[str]]:
    """Compile patterns into regular expressions (cached).

    Args:
        patterns: One pattern or several, in the language described in this module.

    Returns:
        One compiled expression per pattern, each to be used with ``fullmatch``.
    """
    return [_compile(pattern) for pattern in as_pattern_list(patterns)]


def matches_any(name: str, patterns: Patterns) -> bool:
    """Whether ``name`` is matched by at least one of ``patterns``.

    Args:
        name: A parameter name such as ``"encoders.rgb.conv1.weight"``.
        patterns: One pattern or several.

    Returns:
        True if any pattern matches the whole name.
    """
    return any(regex.fullmatch(name) for regex in compile_patterns(patterns))


def select_names(names: Iterable[str], patterns: Patterns) -> list[str]:
    """The names, in their given order, that any of ``patterns`` matches.

    Args:
        names: Candidate names, e.g. from ``model.named_parameters()``.
        patterns: One pattern or several.

    Returns:
        The matching names in input order.
    """
    compiled = compile_patterns(patterns)
    return [name for name in names if any(regex.fullmatch(name) for regex in compiled)]


def describe_names(names: Sequence[str], limit: int = 8) -> str:
    """A short human-readable listing of names for error messages.

    Args:
        names: The names to list.
        limit: How many to show before summarising the rest.

    Returns:
        E.g. ``"'a.weight', 'a.bias' and 3 more"``.
    """
    shown = ", ".join(repr(name) for name in names[:limit])
    rest = len(names) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown


def assign_owners(names: Sequence[str], patterns: Mapping[str, Patterns], owner_kind: str) -> dict[str, list[str]]:
    """Give each name to the one owner whose patterns match it; a name matched twice is an error.

    The single home of the "each parameter has exactly one owner" rule, used by the parameter
    groups (:func:`mslightning.optim.build_param_groups`) and by the streams of
    :class:`~mslightning.callbacks.StreamMonitor`. Owners that match nothing get an empty list;
    the caller says what that means for them.

    Args:
        names: Candidate names in order, e.g. from ``model.named_parameters()``.
        patterns: Owner name -> its pattern(s).
        owner_kind: What an owner is, for the message (``"group"``, ``"stream"``).

    Returns:
        Owner -> the names it owns, in input order, for every owner of ``patterns``.

    Raises:
        ValueError: If a name is matched by two owners, naming it, both owners and their patterns.
    """
    owner_of: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    for owner, owner_patterns in patterns.items():
        members[owner] = select_names(names, owner_patterns)
        for name in members[owner]:
            if name in owner_of:
                first = owner_of[name]
                raise ValueError(
                    f"Parameter {name!r} is matched by {owner_kind} {first!r} (patterns "
                    f"{as_pattern_list(patterns[first])}) and by {owner_kind} {owner!r} (patterns "
                    f"{as_pattern_list(owner_patterns)}); a parameter may belong to one {owner_kind} only. "
                    "Narrow one of the patterns."
                )
            owner_of[name] = owner
    return members
