"""Let plain Python objects that hold CuTe DSL values live across run-time loops and branches.

The DSL turns a ``for``/``if`` over run-time values into an MLIR region; every object the region
may touch must say which MLIR values it holds and how to rebuild itself from new ones.  This mixin
answers for any object by walking its ``__dict__``: DSL values, tensors and lists of them are
carried, Python constants (tile shapes, injected functions, ints) are kept as they are.
Importing cutlass is deferred so that CPU-only users of the subclasses need not have it.
"""

from __future__ import annotations

from typing import Any


class DslCarried:
    """Mixin implementing the DSL's value-extraction protocol over the instance ``__dict__``."""

    def __extract_mlir_values__(self) -> list[Any]:
        import cutlass

        values: list[Any] = []
        for v in self.__dict__.values():
            values += cutlass.extract_mlir_values(v)
        return values

    def __new_from_mlir_values__(self, values: list[Any]) -> Any:
        import cutlass

        new = object.__new__(type(self))
        for k, v in self.__dict__.items():
            count = len(cutlass.extract_mlir_values(v))
            new.__dict__[k] = cutlass.new_from_mlir_values(v, values[:count])
            values = values[count:]
        return new
