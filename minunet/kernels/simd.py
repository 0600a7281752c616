"""Sixteen float32 lanes as one Numba value, for the convolution's register-tiled product.

Numba vectorises a loop by itself only along its innermost index, and then keeps partial
results in memory. A matrix-product kernel fast enough to beat BLAS on the U-Net's shapes
needs the opposite: a tile of the result (8 output channels x 48 pixels, say) held in vector
registers across the whole sum over k. This module gives Numba a value type for one vector of
16 float32 (LLVM's `<16 x float>`, one AVX-512 register) and seven operations on it, each a few
lines of LLVM IR (`numba.extending.intrinsic`):

    vzero()            -> 16 zeros
    vload(a, i, j)     -> a[i, j : j + 16]           (a 2-D float32 array, unit stride along j)
    vstore(a, i, j, v) :  a[i, j : j + 16] = v
    vfma(x, s, acc)    -> acc + x * s                (s a float32 scalar, fused multiply-add)
    vmul_add(x, y, acc)-> acc + x * y                (lane by lane, fused)
    vsum(v)            -> v[0] + ... + v[15]         (a float32, pairwise in a fixed order)
    vbias_relu(v, b, relu) -> v + b, then max(., 0) if relu

more for the Winograd transforms (winograd.py) and the up-step (upsample.py):

    vadd(x, y), vsub(x, y)            -> x + y, x - y lane by lane
    vdeinterleave4(v0, v1, v2, v3)    -> (p0, p1, p2, p3), p_k[l] = [v0 | v1 | v2 | v3][4l + k]
    vinterleave4(p0, p1, p2, p3)      -> (v0, v1, v2, v3), the inverse
    vinterleave2(p0, p1)              -> (v0, v1), value 2l + k of [v0 | v1] = p_k[l]
    vdeinterleave2(v0, v1)            -> (p0, p1), the inverse
    vnext(a, b)                       -> [a[1], ..., a[15], b[0]] (one lane along)

three for the softmax of predict's tiles (tiles.py):

    vmax(x, y)                        -> y where y > x, else x, lane by lane (Python's max)
    vdiv(x, y)                        -> x / y lane by lane (IEEE division)
    vexp(x)                           -> e**x lane by lane, in float64 inside (see vexp)

and one more for the threads that run the direct route's items (conv.py):

    fetch_add(a, i, v) -> old a[i], a[i] += v        (atomic, on a 1-D int64 array)

No bounds checks: the caller guarantees j + 16 <= a.shape[1]. On a CPU without AVX-512 LLVM
splits each vector into narrower ones (correct, slower); `HAVE_AVX512` lets callers choose
BLAS there instead.
"""

from __future__ import annotations

import math

from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import config, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

LANES = 16
_VECTOR = ir.VectorType(ir.FloatType(), LANES)


def _host_has_avx512() -> bool:
    try:
        return bool(llvm_binding.get_host_cpu_features().get("avx512f", False))
    except Exception:  # no feature list on this platform
        return False


HAVE_AVX512 = _host_has_avx512()
# The intrinsics exist only in compiled code: with NUMBA_DISABLE_JIT=1 callers take BLAS.
AVAILABLE = not config.DISABLE_JIT


class Float32x16(types.Type):
    """Numba's type for 16 float32 lanes held in one vector register."""

    def __init__(self) -> None:
        super().__init__(name="float32x16")


float32x16 = Float32x16()


@register_model(Float32x16)
class _Float32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type) -> None:  # noqa: ANN001 (Numba's signature)
        super().__init__(dmm, fe_type, _VECTOR)


def _float32_matrix(a: types.Type) -> bool:
    return isinstance(a, types.Array) and a.ndim == 2 and a.dtype == types.float32


def _address(context, builder, array_type, array, i, j):  # noqa: ANN001
    """Pointer to a[i, j] (any strides, no wrap-around, no bounds check)."""
    a = context.make_array(array_type)(context, builder, array)
    shape = cgutils.unpack_tuple(builder, a.shape, 2)
    strides = cgutils.unpack_tuple(builder, a.strides, 2)
    pointer = cgutils.get_item_pointer2(context, builder, a.data, shape, strides,
                                        array_type.layout, [i, j], wraparound=False,
                                        boundscheck=False)
    return builder.bitcast(pointer, _VECTOR.as_pointer())


def _broadcast(builder, scalar):  # noqa: ANN001
    """The float32 `scalar` in every lane of a vector."""
    undefined = ir.Constant(_VECTOR, ir.Undefined)
    lane0 = builder.insert_element(undefined, scalar, ir.Constant(ir.IntType(32), 0))
    every_lane = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
    return builder.shuffle_vector(lane0, undefined, every_lane)


def _fused_multiply_add(builder, x, y, acc):  # noqa: ANN001
    """acc + x * y lane by lane, one rounding (LLVM's fma intrinsic)."""
    fma = cgutils.get_or_insert_function(builder.module,
                                         ir.FunctionType(_VECTOR, [_VECTOR] * 3),
                                         f"llvm.fma.v{LANES}f32")
    return builder.call(fma, [x, y, acc])


@intrinsic
def vzero(typingctx):  # noqa: ANN001, ANN201
    """16 zeros."""
    def codegen(context, builder, signature, args):  # noqa: ANN001
        return ir.Constant(_VECTOR, None)
    return float32x16(), codegen


@intrinsic
def vload(typingctx, a, i, j):  # noqa: ANN001, ANN201
    """a[i, j : j + 16] of a 2-D float32 array whose rows have unit stride."""
    if not (_float32_matrix(a) and isinstance(i, types.Integer) and isinstance(j, types.Integer)):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001
        array, row, column = args
        return builder.load(_address(context, builder, signature.args[0], array, row, column),
                            align=4)
    return float32x16(a, i, j), codegen


@intrinsic
def vstore(typingctx, a, i, j, v):  # noqa: ANN001, ANN201
    """a[i, j : j + 16] = v."""
    if not (_float32_matrix(a) and isinstance(i, types.Integer)
            and isinstance(j, types.Integer) and v == float32x16):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001
        array, row, column, value = args
        builder.store(value, _address(context, builder, signature.args[0], array, row, column),
                      align=4)
        return context.get_dummy_value()
    return types.void(a, i, j, v), codegen


@intrinsic
def vfma(typingctx, x, s, acc):  # noqa: ANN001, ANN201
    """acc + x * s, fused (one rounding), with the float32 scalar s in every lane."""
    if not (x == float32x16 and acc == float32x16 and s == types.float32):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001
        vector, scalar, accumulator = args
        return _fused_multiply_add(builder, vector, _broadcast(builder, scalar), accumulator)
    return float32x16(x, s, acc), codegen


@intrinsic
def vmul_add(typingctx, x, y, acc):  # noqa: ANN001, ANN201
    """acc + x * y lane by lane, fused (one rounding)."""
    if not (x == float32x16 and y == float32x16 and acc == float32x16):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001
        return _fused_multiply_add(builder, *args)
    return float32x16(x, y, acc), codegen


@intrinsic
def vsum(typingctx, v):  # noqa: ANN001, ANN201
    """The sum of the 16 lanes (a float32), added pairwise: lanes i and i + 8, then i and
    i + 4, and so on, always in the same order."""
    if v != float32x16:
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001
        value = args[0]
        width = LANES
        while width > 1:  # add the upper half onto the lower half
            width //= 2
            upper = builder.shuffle_vector(
                value, value, ir.Constant(ir.VectorType(ir.IntType(32), LANES),
                                          [(i + width) % LANES for i in range(LANES)]))
            value = builder.fadd(value, upper)
        return builder.extract_element(value, ir.Constant(ir.IntType(32), 0))
    return types.float32(v), codegen


@intrinsic
def vbias_relu(typingctx, v, b, relu):  # noqa: ANN001, ANN201
    """v + b in every lane, then, when relu is true, max(., 0) (0 where the sum is not > 0)."""
    if not (v == float32x16 and b == types.float32 and isinstance(relu, types.Boolean)):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001
        vector, scalar, clamp = args
        total = builder.fadd(vector, _broadcast(builder, scalar))
        zeros = ir.Constant(_VECTOR, None)
        clamped = builder.select(builder.fcmp_ordered(">", total, zeros), total, zeros)
        if clamp.type != ir.IntType(1):  # a boolean held in a wider integer
            clamp = builder.icmp_unsigned("!=", clamp, ir.Constant(clamp.type, 0))
        return builder.select(clamp, clamped, total)
    return float32x16(v, b, relu), codegen


@intrinsic
def fetch_add(typingctx, a, i, v):  # noqa: ANN001, ANN201
    """Atomically: old = a[i]; a[i] = old + v; return old (a 1-D int64 array). Threads that
    share a counter this way each get distinct values, with no lock and no GIL."""
    if not (isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.int64
            and isinstance(i, types.Integer) and isinstance(v, types.Integer)):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001
        array = context.make_array(signature.args[0])(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, signature.args[0], array,
                                           [args[1]])
        value = context.cast(builder, args[2], signature.args[2], types.int64)
        return builder.atomic_rmw("add", pointer, value, "seq_cst")
    return types.int64(a, i, v), codegen


@intrinsic
def vadd(typingctx, x, y):  # noqa: ANN001, ANN201
    """x + y lane by lane."""
    if not (x == float32x16 and y == float32x16):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001
        return builder.fadd(*args)
    return float32x16(x, y), codegen


@intrinsic
def vsub(typingctx, x, y):  # noqa: ANN001, ANN201
    """x - y lane by lane."""
    if not (x == float32x16 and y == float32x16):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001
        return builder.fsub(*args)
    return float32x16(x, y), codegen


def _concat4(builder, vectors):  # noqa: ANN001
    """Four 16-lane vectors as one 64-lane vector, in order."""
    def join(a, b, lanes):  # noqa: ANN001
        mask = ir.Constant(ir.VectorType(ir.IntType(32), 2 * lanes), list(range(2 * lanes)))
        return builder.shuffle_vector(a, b, mask)
    return join(join(vectors[0], vectors[1], LANES), join(vectors[2], vectors[3], LANES),
                2 * LANES)


def _pick(builder, wide, lanes):  # noqa: ANN001
    """The 16 lanes `lanes` of a 64-lane vector, as one vector."""
    mask = ir.Constant(ir.VectorType(ir.IntType(32), LANES), lanes)
    return builder.shuffle_vector(wide, ir.Constant(wide.type, ir.Undefined), mask)


_QUAD = types.UniTuple(float32x16, 4)


@intrinsic
def vdeinterleave4(typingctx, v0, v1, v2, v3):  # noqa: ANN001, ANN201
    """The 64 values of v0..v3 (in order) split by position modulo 4: (p0, p1, p2, p3),
    p_k[l] = value 4l + k (64 values read at stride 4, from contiguous loads)."""
    if not all(v == float32x16 for v in (v0, v1, v2, v3)):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001
        wide = _concat4(builder, args)
        phases = [_pick(builder, wide, [4 * lane + k for lane in range(LANES)])
                  for k in range(4)]
        return context.make_tuple(builder, signature.return_type, phases)
    return _QUAD(v0, v1, v2, v3), codegen


@intrinsic
def vinterleave4(typingctx, p0, p1, p2, p3):  # noqa: ANN001, ANN201
    """The inverse of vdeinterleave4: (v0, v1, v2, v3) with value 4l + k of [v0 | .. | v3]
    = p_k[l] (64 values written at stride 4, as contiguous stores)."""
    if not all(v == float32x16 for v in (p0, p1, p2, p3)):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001
        wide = _concat4(builder, args)        # p_k[l] at 16k + l
        order = [16 * (m % 4) + m // 4 for m in range(4 * LANES)]
        vectors = [_pick(builder, wide, order[16 * i:16 * (i + 1)]) for i in range(4)]
        return context.make_tuple(builder, signature.return_type, vectors)
    return _QUAD(p0, p1, p2, p3), codegen


@intrinsic
def vinterleave2(typingctx, p0, p1):  # noqa: ANN001, ANN201
    """(v0, v1) with value 2l + k of [v0 | v1] = p_k[l]: two vectors written at stride 2
    (the 2x2 up-step's two columns kw = 0, 1), as contiguous stores."""
    if not (p0 == float32x16 and p1 == float32x16):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001
        order = [LANES * (m % 2) + m // 2 for m in range(2 * LANES)]
        mask = ir.Constant(ir.VectorType(ir.IntType(32), 2 * LANES), order)
        wide = builder.shuffle_vector(args[0], args[1], mask)        # (32,) interleaved
        vectors = [_pick32(builder, wide, i) for i in range(2)]
        return context.make_tuple(builder, signature.return_type, vectors)
    return types.UniTuple(float32x16, 2)(p0, p1), codegen


@intrinsic
def vdeinterleave2(typingctx, v0, v1):  # noqa: ANN001, ANN201
    """The inverse of vinterleave2: (p0, p1) with p_k[l] = value 2l + k of [v0 | v1] (two
    vectors read at stride 2, the up-step's columns kw = 0, 1, from contiguous loads)."""
    if not (v0 == float32x16 and v1 == float32x16):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001
        vectors = [builder.shuffle_vector(
            args[0], args[1], ir.Constant(ir.VectorType(ir.IntType(32), LANES),
                                          [2 * lane + k for lane in range(LANES)]))
            for k in range(2)]
        return context.make_tuple(builder, signature.return_type, vectors)
    return types.UniTuple(float32x16, 2)(v0, v1), codegen


def _pick32(builder, wide, half):  # noqa: ANN001
    """Lanes 16 half .. 16 half + 15 of a 32-lane vector."""
    mask = ir.Constant(ir.VectorType(ir.IntType(32), LANES),
                       [LANES * half + lane for lane in range(LANES)])
    return builder.shuffle_vector(wide, ir.Constant(wide.type, ir.Undefined), mask)


@intrinsic
def vnext(typingctx, a, b):  # noqa: ANN001, ANN201
    """[a[1], .., a[15], b[0]]: the 16 values one lane along the sequence [a | b]."""
    if not (a == float32x16 and b == float32x16):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001
        mask = ir.Constant(ir.VectorType(ir.IntType(32), LANES), list(range(1, LANES + 1)))
        return builder.shuffle_vector(args[0], args[1], mask)
    return float32x16(a, b), codegen


@intrinsic
def vmax(typingctx, x, y):  # noqa: ANN001, ANN201
    """Lane by lane y if y > x else x: Python's max(x, y) (x kept on ties and where y is NaN)."""
    if not (x == float32x16 and y == float32x16):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001
        x, y = args
        return builder.select(builder.fcmp_ordered(">", y, x), y, x)
    return float32x16(x, y), codegen


@intrinsic
def vdiv(typingctx, x, y):  # noqa: ANN001, ANN201
    """x / y lane by lane (IEEE division: each lane the same bits as a scalar division)."""
    if not (x == float32x16 and y == float32x16):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001
        return builder.fdiv(*args)
    return float32x16(x, y), codegen


_DOUBLES = ir.VectorType(ir.DoubleType(), LANES)
_LONGS = ir.VectorType(ir.IntType(64), LANES)
EXP_FLOOR = -110.0  # e**-110 = 1.7e-48, under half of float32's least subnormal: rounds to 0
_LN2_HI = 6.93147180369123816490e-01   # ln 2 = _LN2_HI + _LN2_LO, _LN2_HI with 32 bits: n
_LN2_LO = 1.90821492927058770002e-10   # * _LN2_HI is exact for the |n| <= 159 used here
_TAYLOR = [1.0 / math.factorial(k) for k in range(12)]   # e**r = sum r**k / k!, k <= 11


def _doubles(value: float) -> ir.Constant:
    return ir.Constant(_DOUBLES, [value] * LANES)


@intrinsic
def vexp(typingctx, x):  # noqa: ANN001, ANN201
    """e**x lane by lane, computed in float64 and rounded once to float32. x = n ln2 + r with
    n = round(x / ln2) and |r| <= ln2 / 2 (r by two fused multiply-adds, Cody and Waite's
    split of ln2); e**r by its Taylor series to r**11 / 11! (Horner, fused; the first term
    left out is 3e-15 of e**r); e**x = e**r * 2**n, 2**n built from its exponent bits. The
    float64 value is within 1e-14 of e**x relatively, so the float32 result is e**x correctly
    rounded but for values within 1e-14 of a rounding midpoint (C libraries' expf differ from
    it by one ulp more often: glibc's is documented to 0.502 ulp). NaN stays NaN; x below
    EXP_FLOOR gives 0 (the exact value underflows float32 there); for x <= 88 (+inf above is
    not handled: the softmax's x are <= 0)."""
    if x != float32x16:
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001
        def intrinsic_fn(name: str, arity: int):
            return cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_DOUBLES, [_DOUBLES] * arity), name)
        fma = intrinsic_fn(f"llvm.fma.v{LANES}f64", 3)
        nearest = intrinsic_fn(f"llvm.roundeven.v{LANES}f64", 1)
        xd = builder.fpext(args[0], _DOUBLES)
        nan = builder.fcmp_unordered("uno", xd, xd)
        xd = builder.select(nan, _doubles(0.0), xd)             # NaN lanes: put back at the end
        low = builder.fcmp_ordered("<", xd, _doubles(EXP_FLOOR))
        xd = builder.select(low, _doubles(EXP_FLOOR), xd)
        n = builder.call(nearest, [builder.fmul(xd, _doubles(1.0 / math.log(2.0)))])
        r = builder.call(fma, [n, _doubles(-_LN2_HI), xd])     # x - n ln2, in two steps
        r = builder.call(fma, [n, _doubles(-_LN2_LO), r])
        p = _doubles(_TAYLOR[-1])
        for coefficient in reversed(_TAYLOR[:-1]):               # e**r, Horner
            p = builder.call(fma, [p, r, _doubles(coefficient)])
        exponent = builder.add(builder.fptosi(n, _LONGS), ir.Constant(_LONGS, [1023] * LANES))
        two_n = builder.bitcast(builder.shl(exponent, ir.Constant(_LONGS, [52] * LANES)),
                                _DOUBLES)                        # 2**n, n >= -159
        y = builder.fptrunc(builder.fmul(p, two_n), _VECTOR)
        return builder.select(builder.fcmp_unordered("uno", args[0], args[0]), args[0], y)
    return float32x16(x), codegen
