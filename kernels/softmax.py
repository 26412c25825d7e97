"""Online softmax for register-resident score tiles (the Hopper case: S and O live in registers).

Each thread holds a few rows of S (its slice of a warpgroup MMA accumulator); a row is spread over
the 4 threads of a quad.  The row max is reduced over the quad on every tile (all four must scale
by the same factor), the row sum only once at the end.  Scores stay unscaled until ``exp2``, where
``scale * log2(e)`` is folded into one FMA: ``exp2(s * scale_log2 - max * scale_log2)``.

Rows that have seen no visible key yet have max ``-inf``; they use 0 as the subtrahend so that
``exp2(-inf - 0) = 0`` instead of NaN, and keep a zero sum.  Padded query rows past the axis are
never stored, but must not produce NaN that could leak through a shared reduction.

``exp2_emulation = n > 0`` computes every n-th exponential of a row (a fixed set of columns) with
a polynomial on the FMA pipe instead of the MUFU unit (:func:`exp2_poly`).  Why: an H100 SM
retires 16 MUFU exponentials per clock; a 128x128 tile needs 16384 of them (1024 clocks), as long
as its two GEMMs take at head dim 64 (2 x 128x128x64 MACs at 2048 per clock) and twice theirs at
head dim 32, so there the softmax may set the pace.  The price: 8 FMA-pipe instructions (FMNMX,
3 FADD, 3 FFMA, FMUL) and an LEA for each MUFU op saved; with one in four, the 2D D=64 unmasked
loop issues 570 instead of 441 instructions per tile.  Which of the MUFU unit and the issue slots
binds is for a GPU to say: off in the product until measured.
"""

from __future__ import annotations

import math

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Uint32, const_expr

from gna_cute.kernels.dsl_values import DslCarried

LN2 = math.log(2.0)
#: 2^f ~ c0 + c1 f + c2 f^2 + c3 f^3 on [-1/2, 1/2]: the minimax fit of the relative error (Remez
#: exchange; largest relative error 7.5e-5, below fp16's half ulp of 4.9e-4; tests/test_softmax_poly.py).
EXP2_POLY = (0.99992807, 0.69326099, 0.24261112, 0.05517167)
#: 1.5 * 2^23: ``x + magic`` rounds ``x`` to the nearest integer j and leaves 0x400000 + j in the
#: low mantissa bits, so the exponent of 2^j is an integer add and shift away (no conversion op).
ROUND_MAGIC = 12582912.0
#: Inputs are clamped here first: 2^j with j = -127 is built as +0.0, so exp2_poly(-inf) is exactly 0.
EXP2_POLY_MIN = -127.0


@cute.jit
def exp2_poly(x: Float32) -> Float32:
    """``2^x`` for ``x <= 0`` (``-inf`` included) without MUFU: ``x = j + f`` with j an integer and
    ``|f| <= 1/2``, ``2^f`` by the cubic :data:`EXP2_POLY` (three FMAs), ``2^j`` assembled in the
    exponent bits, one multiply."""
    x = cute.arch.fmax(x, Float32(EXP2_POLY_MIN))
    t = x + Float32(ROUND_MAGIC)
    f = x - (t - Float32(ROUND_MAGIC))
    c0, c1, c2, c3 = EXP2_POLY
    p = Float32(c3) * f + Float32(c2)
    p = p * f + Float32(c1)
    p = p * f + Float32(c0)
    # t's bits are 0x4B400000 + j (|j| < 2^22), so (bits + 127) mod 512 = j + 127 for -127 <= j <= 0:
    # the exponent field of 2^j (j = -127 gives +0.0)
    scale = ((t.bitcast(Uint32) + Uint32(127)) & Uint32(0x1FF)) << Uint32(23)
    return p * scale.bitcast(Float32)


def acc_rows_view(acc: cute.Tensor) -> cute.Tensor:
    """View a Hopper MMA accumulator ``((2, 2, N/8), M, N)`` as ``(rows, cols)`` of this thread.

    Rows are ``(2, M)`` (the thread's row pair, times M repeats), columns ``(2, N/8, N)``.
    """
    layout = cute.make_layout(acc.layout.shape)  # compact column-major over the same shape
    s, d = layout.shape, layout.stride
    rows = cute.make_layout(
        ((s[0][1], s[1]), (s[0][0], s[0][2], s[2])),
        stride=((d[0][1], d[1]), (d[0][0], d[0][2], d[2])),
    )
    return cute.make_tensor(acc.iterator, cute.composition(acc.layout, rows))


class OnlineSoftmax(DslCarried):
    """Running row max / row sum of one thread's rows, and the O rescale they imply."""

    def __init__(self, num_rows: int, scale_log2: Float32, exp2_emulation: int = 0) -> None:
        self.num_rows = num_rows
        self.scale_log2 = scale_log2
        self.exp2_emulation = exp2_emulation  # static: every n-th column by exp2_poly (0: none)
        self.row_max = cute.make_rmem_tensor(num_rows, Float32)
        self.row_sum = cute.make_rmem_tensor(num_rows, Float32)

    def reset(self) -> None:
        self.row_max.fill(-Float32.inf)
        self.row_sum.fill(0.0)

    @cute.jit
    def update(self, acc_S: cute.Tensor, row_scale: cute.Tensor) -> None:
        """Exponentiate ``acc_S`` in place (it becomes P) and write each row's O rescale factor."""
        s_rows = acc_rows_view(acc_S)
        ncol = cute.size(s_rows, mode=[1])
        for r in cutlass.range_constexpr(self.num_rows):
            # Four independent max chains: a single chain would serialize ncol FMNMX latencies.
            chains = [s_rows[r, c] for c in range(min(4, ncol))]
            for c in cutlass.range_constexpr(len(chains), ncol):
                chains[c % 4] = cute.arch.fmax(chains[c % 4], s_rows[r, c])
            tile_max = chains[0]
            for c in cutlass.range_constexpr(1, len(chains)):
                tile_max = cute.arch.fmax(tile_max, chains[c])
            tile_max = cute.arch.warp_reduction_max(tile_max, threads_in_group=4)
            prev_max = self.row_max[r]
            new_max = cute.arch.fmax(prev_max, tile_max)
            self.row_max[r] = new_max
            safe_max = Float32(0.0) if new_max == -Float32.inf else new_max
            max_scaled = safe_max * self.scale_log2
            scale = cute.math.exp2(prev_max * self.scale_log2 - max_scaled, fastmath=True)
            row_scale[r] = scale
            sums = [self.row_sum[r] * scale, Float32(0.0)]
            n = self.exp2_emulation
            for c in cutlass.range_constexpr(ncol):
                arg = s_rows[r, c] * self.scale_log2 - max_scaled
                if const_expr(n > 0 and c % n == n - 1):
                    p = exp2_poly(arg)
                else:
                    p = cute.math.exp2(arg, fastmath=True)
                s_rows[r, c] = p
                sums[c % 2] = sums[c % 2] + p
            self.row_sum[r] = sums[0] + sums[1]

    @cute.jit
    def finalize(self, row_scale: cute.Tensor, lse: cute.Tensor) -> None:
        """Quad-reduce the row sums; write ``1 / sum`` (0 for empty rows) and the natural-log LSE."""
        for r in cutlass.range_constexpr(self.num_rows):
            total = cute.arch.warp_reduction_sum(self.row_sum[r], threads_in_group=4)
            empty = total == Float32(0.0)
            row_scale[r] = Float32(0.0) if empty else cute.arch.rcp_approx(total)
            lse_r = (self.row_max[r] * self.scale_log2 + cute.math.log2(total, fastmath=True)) * LN2
            lse[r] = -Float32.inf if empty else lse_r


@cute.jit
def rescale_rows(acc_O: cute.Tensor, row_scale: cute.Tensor) -> None:
    """Multiply each of this thread's rows of an accumulator by its factor."""
    o_rows = acc_rows_view(acc_O)
    for r in cutlass.range_constexpr(cute.size(o_rows, mode=[0])):
        for c in cutlass.range_constexpr(cute.size(o_rows, mode=[1])):
            o_rows[r, c] = o_rows[r, c] * row_scale[r]
