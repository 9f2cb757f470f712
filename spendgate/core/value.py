"""The base of the values every proxied call builds (pure).

``Value`` is a frozen ``msgspec.Struct``: immutable, compared and hashed by its fields,
with a dataclass's keyword and positional constructor, built in C. On CPython 3.11 a
frozen ``slots`` dataclass's ``__init__`` calls ``object.__setattr__`` once per field
(~1,350 instructions a field, ~15,500 for ten fields); building a ``Value`` takes
~1,400-1,600 whatever its fields, and its fields are read as fast as a dataclass's
slots. A ``NamedTuple`` takes ~3,200-3,800 to build, but 3.11 does not specialise
reads of its fields, and it is a tuple too (equal to a plain tuple of the same values,
iterable). Values not built on every call stay frozen ``slots`` dataclasses. The
budget holds and settlements and the rate limiter's results (``Hold``, ``Settlement``,
``CheckResult``) are ``Value`` too (~17,000 instructions fewer per call with every
policy on); the named tuples left are unpacked as tuples: ``Check`` (each backend
unpacks it), ``LedgerEntry`` (its tuple form is its SQLite and spool row) and
``Pending``.

A ``Value`` is copied with changes by ``msgspec.structs.replace`` (not
``dataclasses.replace``), and setting a field raises ``AttributeError`` (not
``dataclasses.FrozenInstanceError``).
"""

from __future__ import annotations

import msgspec


class Value(msgspec.Struct, frozen=True):
    """Subclass it as ``class Name(Value, frozen=True)`` and declare the fields as for a
    dataclass (defaults last). The subclass runs frozen without the ``frozen=True``;
    mypy needs it, as it does not carry a struct's options over to its subclasses."""
