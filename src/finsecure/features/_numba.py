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
import numpy as np
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
    divide by numbers they know are not zero). ``nogil=True`` releases the GIL while a kernel runs,
    so the pipeline's worker computes features while the thread feeding it parses the next chunk.
    Kernels only touch the arrays they are given, and one step runs on one thread at a time.
    """
    return cast(F, numba.njit(cache=True, error_model="numpy", nogil=True)(fn))


def inline_kernel(fn: F) -> F:
    """Like :func:`kernel`, for small helpers that take arrays: always inlined into the calling kernel.

    A real call passing arrays makes numba count references to them (atomic operations) on every
    call; inlined at compile time, the helper costs nothing beyond its own arithmetic.
    """
    return cast(F, numba.njit(cache=True, error_model="numpy", nogil=True, inline="always")(fn))


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


@inline_kernel
def prefetch(array: Any, row: int, col: int) -> None:
    """Ask the CPU to start loading ``array[row, col]`` into cache (2-D arrays; a no-op hint).

    State rows of random entities miss every cache; issuing their loads a few rows ahead lets the
    memory system fetch several at once instead of one after another.
    """
    _prefetch_intrinsic(array, row, col)


def _prefetch_flat_typing(typingctx: Any, array: Any, index: Any) -> Any:
    """LLVM ``prefetch`` (for reading) of ``array[index]`` of a 1-D array."""
    signature = types.void(array, index)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        array_type = sig.args[0]
        data = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(  # type: ignore[no-untyped-call]  # numba helper, untyped
            context, builder, array_type, data, [args[1]], wraparound=False
        )
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(  # type: ignore[no-untyped-call]  # numba helper, untyped
            builder.module,
            ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]),
            "llvm.prefetch.p0i8",
        )
        # Arguments: address, 0 = for reading, 3 = keep in all cache levels, 1 = data cache.
        builder.call(
            function,
            [
                builder.bitcast(pointer, byte_pointer),
                ir.Constant(i32, 0),
                ir.Constant(i32, 3),
                ir.Constant(i32, 1),
            ],
        )
        return context.get_dummy_value()

    return signature, codegen


_prefetch_flat_intrinsic: Any = intrinsic(_prefetch_flat_typing)


@inline_kernel
def prefetch_flat(array: Any, index: int) -> None:
    """Ask the CPU to start loading ``array[index]`` (1-D arrays) into cache, for reading."""
    _prefetch_flat_intrinsic(array, index)


def _load_u64_typing(typingctx: Any, array: Any, index: Any) -> Any:
    """Eight bytes of a ``uint8`` array from ``index`` on, as one little-endian ``uint64`` (unaligned)."""
    signature = types.uint64(array, index)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        array_type = sig.args[0]
        data = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(  # type: ignore[no-untyped-call]  # numba helper, untyped
            context, builder, array_type, data, [args[1]], wraparound=False
        )
        i64 = ir.IntType(64)
        word = builder.load(builder.bitcast(pointer, i64.as_pointer()), align=1)
        return word

    return signature, codegen


_load_u64_intrinsic: Any = intrinsic(_load_u64_typing)


@inline_kernel
def load_u64(array: Any, index: int) -> np.uint64:
    """``array[index:index + 8]`` (a ``uint8`` array) read as one little-endian ``uint64``.

    The caller makes sure the eight bytes are inside the array. One load instead of eight lets hashing
    and key comparison go a word at a time.
    """
    return _load_u64_intrinsic(array, index)  # type: ignore[no-any-return]
