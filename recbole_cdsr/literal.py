"""Command-line and grid values as Python literals: parsed, never evaluated.

RecBole 1.2.1's ``Config._convert_config_dict`` runs ``eval`` on every ``--key=value``
string, so ``--foo="__import__('os').system('...')"`` executes. Here a value is read with
:func:`ast.literal_eval` (numbers, strings, bools, None, lists, tuples, dicts); anything
else stays the string it was. ``true``/``false`` in any case are bools, as in RecBole.
"""

from __future__ import annotations

import ast

# The value types RecBole keeps from a converted string (others stay the string).
LITERAL_TYPES = (str, int, float, bool, list, tuple, dict)


def parse_literal(text):
    """``text`` as a literal if it is one, else ``text`` unchanged. Runs no code.

    ``"3"`` -> 3, ``"1e-3"`` -> 0.001, ``"[64, 128]"`` -> [64, 128],
    ``"{'num': 99}"`` -> {'num': 99}, ``"None"`` -> None, ``"True"``/``"true"`` -> True,
    ``"SASRec"`` -> ``"SASRec"``, ``"__import__('os')"`` -> the same string.
    A set, bytes or complex literal stays a string (RecBole keeps only LITERAL_TYPES).
    Non-string input is returned as is.
    """
    if not isinstance(text, str):
        return text
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return {"true": True, "false": False}.get(text.strip().lower(), text)
    if value is None or isinstance(value, LITERAL_TYPES):
        return value
    return text


def format_literal(value) -> str:
    """The command-line text that :func:`parse_literal` reads back as ``value``.

    Plain strings stay bare (``SASRec``); a string that would parse as something else is
    quoted (``"3"`` -> ``'3'``); other values are written with ``repr``.

    Raises:
        ValueError: ``value`` cannot round-trip (a date, a set, NaN, an object...).
    """
    if isinstance(value, str) and parse_literal(value) == value:
        text = value
    else:
        text = repr(value)
    back = parse_literal(text)
    if type(back) is not type(value) or back != value:
        raise ValueError(
            f"{value!r} ({type(value).__name__}) is not a literal that a command line can "
            f"carry: it would be read back as {back!r}; use a number, string, bool, None, "
            "or a list/dict of those"
        )
    return text
