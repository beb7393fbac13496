"""One typed wrapper around ``numba.njit`` so kernels keep their Python signatures for mypy.

numba ships no type stubs; wrapping the decorator once here keeps every kernel module free of
``type: ignore`` comments. ``cache=True`` stores compiled kernels beside the source (``__pycache__``),
so only the first run on a machine pays for compilation. :func:`prefetch` is the one low-level
helper (an LLVM intrinsic).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
from llvmlite import ir  # type: ignore[import-untyped]  # llvmlite ships no type information
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

F = TypeVar("F", bound=Callable[..., Any])

NONE_TS = -(2**63)
"""Sentinel time (µs) meaning "never seen"; the smallest int64, so it compares below every real time."""


def kernel(fn: F) -> F:
    """Compile ``fn`` with ``numba.njit(cache=True)``, keeping its signature for type checkers.

    ``error_model="numpy"`` drops Python's divide-by-zero checks from every division (kernels only
    divide by numbers they know are not zero).
    """
    return cast(F, numba.njit(cache=True, error_model="numpy")(fn))


def _prefetch_typing(typingctx: Any, array: Any, row: Any, col: Any) -> Any:
    """LLVM ``prefetch`` of ``array[row, col]`` (a hint: never faults, even out of bounds)."""
    signature = types.void(array, row, col)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        array_type = sig.args[0]
        data = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(  # type: ignore[no-untyped-call]  # numba helper, untyped
            context, builder, array_type, data, [args[1], args[2]], wraparound=False
        )
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(  # type: ignore[no-untyped-call]  # numba helper, untyped
            builder.module,
            ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]),
            "llvm.prefetch.p0i8",
        )
        # Arguments: address, 1 = for writing, 3 = keep in all cache levels, 1 = data cache.
        builder.call(
            function,
            [
                builder.bitcast(pointer, byte_pointer),
                ir.Constant(i32, 1),
                ir.Constant(i32, 3),
                ir.Constant(i32, 1),
            ],
        )
        return context.get_dummy_value()

    return signature, codegen


_prefetch_intrinsic: Any = intrinsic(_prefetch_typing)


@kernel
def prefetch(array: Any, row: int, col: int) -> None:
    """Ask the CPU to start loading ``array[row, col]`` into cache (2-D arrays; a no-op hint).

    State rows of random entities miss every cache; issuing their loads a few rows ahead lets the
    memory system fetch several at once instead of one after another.
    """
    _prefetch_intrinsic(array, row, col)
