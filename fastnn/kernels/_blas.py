"""Matrix products for kernels: BLAS gemm on row-major arrays, called directly.

Numba's own ``np.dot`` type-checks and compiles a wrapper per layout combination (about
0.1 s each on a cold start); ``matmul`` emits the call to the same BLAS entry point Numba
uses (``numba_xxgemm``: SciPy's OpenBLAS) in place, with the transpose flags and ``beta`` the
caller needs, and compiles nothing of its own. Shapes are the caller's responsibility: the
public wrappers check them.

    matmul(a, b, out, trans_a, trans_b, accumulate):
        out (M, N) = op(a) @ op(b) (+ out when accumulate), op(a) = a.T if trans_a else a
        a (M, K) or (K, M); b (K, N) or (N, K); all C-contiguous of one float dtype

Row-major through column-major BLAS: a row-major matrix is its transpose in column-major
order, so out.T = op(b).T @ op(a).T is one gemm with the operands swapped.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.np.linalg import ensure_blas

from ._jit import intrinsic_with_twin


def _matmul_python(a, b, out, trans_a, trans_b, accumulate):
    product = (a.T if trans_a else a) @ (b.T if trans_b else b)
    if accumulate:
        out += product
    else:
        out[...] = product


@intrinsic_with_twin(_matmul_python)
def matmul(typingctx, a, b, out, trans_a, trans_b, accumulate):
    """out = op(a) @ op(b) (+ out when accumulate); see the module docstring."""
    if not all(isinstance(t, types.Array) and t.ndim == 2 and t.layout == "C" and t.dtype == a.dtype
               for t in (a, b, out)) or a.dtype not in (types.float32, types.float64):
        return None
    ensure_blas()  # SciPy's BLAS is there, or a clear error now rather than garbage later
    dtype = a.dtype

    def codegen(context, builder, signature, args):
        from numba.np.arrayobj import make_array

        A, B, C = (make_array(t)(context, builder, v) for t, v in zip(signature.args[:3], args[:3]))
        ta, tb, acc = (context.cast(builder, v, t, types.boolean) for v, t in zip(args[3:], signature.args[3:]))
        a_rows, a_cols = cgutils.unpack_tuple(builder, A.shape, 2)
        _, b_cols = cgutils.unpack_tuple(builder, B.shape, 2)
        b_rows = cgutils.unpack_tuple(builder, B.shape, 2)[0]
        m, n = cgutils.unpack_tuple(builder, C.shape, 2)
        k = builder.select(ta, a_rows, a_cols)
        if config.BOUNDSCHECK:  # the shapes agree (the public wrappers and the engine check them)
            wrong = builder.or_(builder.icmp_signed("!=", m, builder.select(ta, a_cols, a_rows)),
                                builder.or_(builder.icmp_signed("!=", k, builder.select(tb, b_cols, b_rows)),
                                            builder.icmp_signed("!=", n, builder.select(tb, b_rows, b_cols))))
            with cgutils.if_unlikely(builder, wrong):
                context.call_conv.return_user_exc(builder, IndexError, ("matmul: the shapes do not agree",))
        char = ir.IntType(8)
        trans, notrans = ir.Constant(char, ord("t")), ir.Constant(char, ord("n"))
        one, zero = context.get_constant(dtype, 1.0), context.get_constant(dtype, 0.0)
        alpha, beta = cgutils.alloca_once_value(builder, one), cgutils.alloca_once_value(builder, builder.select(
            acc, one, zero))
        intp, voidp = context.get_value_type(types.intp), cgutils.voidptr_t
        fnty = ir.FunctionType(ir.IntType(32), [char, char, char, intp, intp, intp, voidp, voidp, intp, voidp,
                                                intp, voidp, voidp, intp])
        gemm = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")
        kind = ir.Constant(char, ord("s" if dtype == types.float32 else "d"))
        status = builder.call(gemm, [kind, builder.select(tb, trans, notrans), builder.select(ta, trans, notrans),
                                     n, m, k, builder.bitcast(alpha, voidp), builder.bitcast(B.data, voidp), b_cols,
                                     builder.bitcast(A.data, voidp), a_cols, builder.bitcast(beta, voidp),
                                     builder.bitcast(C.data, voidp), n])
        with cgutils.if_unlikely(builder, builder.icmp_signed("!=", status, ir.Constant(ir.IntType(32), 0))):
            context.call_conv.return_user_exc(builder, RuntimeError, ("BLAS gemm failed (is SciPy installed?)",))
        return context.get_dummy_value()
    return types.none(a, b, out, trans_a, trans_b, accumulate), codegen
