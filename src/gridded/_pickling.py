"""Pickling of the plan's many small values by their fields: a frozen dataclass with slots pickles
through a Python `__getstate__` that looks its fields up for every object (a continent's cells
artifact holds millions of observations); by `__reduce__` with one C attrgetter it is several
times faster, and unpickling sets the slots without running `__init__` again."""

from __future__ import annotations

from operator import attrgetter


def by_fields(cls):
    """Class decorator: pickle instances as (class, field values in slot order)."""
    names = cls.__slots__
    values = attrgetter(*names)

    def __reduce__(self):
        return rebuild, (type(self), values(self))

    cls.__reduce__ = __reduce__
    return cls


def rebuild(cls, values: tuple):
    """An instance of a `by_fields` class from its field values (as __reduce__ gave them)."""
    obj = object.__new__(cls)
    for name, value in zip(cls.__slots__, values, strict=True):
        object.__setattr__(obj, name, value)
    return obj
