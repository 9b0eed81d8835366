"""How compiled pieces are put together: calls through addresses, views, raw target rows and
the floating-point mode. Intrinsics here emit a few instructions in their caller and compile
nothing of their own; each has a Python twin (``_jit.intrinsic_with_twin``), so the drivers
also run as plain Python (``fastnn profile``, NUMBA_DISABLE_JIT).
"""
from __future__ import annotations

import functools
import platform

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.core.errors import TypingError

from ._jit import JIT, SIGNATURES, address, intrinsic_with_twin, kernel

X86 = platform.machine().lower() in ("x86_64", "amd64")
_FTZ = 0x8000  # MXCSR bit 15: a result that would be subnormal is zero


def _mxcsr(builder, name, slot):
    fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()])
    builder.call(cgutils.get_or_insert_function(builder.module, fnty, f"llvm.x86.sse.{name}"),
                 [builder.bitcast(slot, ir.IntType(8).as_pointer())])


def clear_flush(builder):
    """Codegen: switch FTZ off (IEEE's default), on the way out of an exception."""
    if X86:
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        _mxcsr(builder, "stmxcsr", slot)
        builder.store(builder.and_(builder.load(slot), ir.Constant(ir.IntType(32), ~_FTZ & 0xFFFFFFFF)), slot)
        _mxcsr(builder, "ldmxcsr", slot)


def _call_python(kernel, args):
    return kernel(*args)


def _through_address(restype):
    # Numba's own calling convention, as a call between two jitted functions: the status it
    # returns carries any exception on to the driver's caller (with the floating-point mode
    # back at IEEE's default: the driver's own restore_fp will not run).
    def codegen(context, builder, signature, llargs):
        addr, packed = llargs
        given = list(signature.args[1].types)
        argtys = [types.unliteral(t) for t in given]  # the callee was compiled for plain types
        values = [context.cast(builder, builder.extract_value(packed, i), t, u)
                  for i, (t, u) in enumerate(zip(given, argtys))]
        fnty = context.call_conv.get_function_type(restype, argtys)
        fn = builder.inttoptr(addr, fnty.as_pointer())
        status, result = context.call_conv.call_function(builder, fn, restype, argtys, values)
        with cgutils.if_unlikely(builder, status.is_error):
            clear_flush(builder)
            context.call_conv.return_status_propagate(builder, status)
        return context.get_dummy_value() if restype == types.none else result
    return codegen


SLOTS = {}  # slot name -> signature(dtype): what a kernel called through that slot takes and returns
DTYPES = (np.float32, np.float64)


def slot(name, signature):
    """Declare the slot ``name``: kernels called through it are compiled for ``signature(dtype)``
    (a Numba signature per float dtype). Drivers name the slot at each call (``call``), and
    the engine takes only addresses compiled for it (``slot_address``)."""
    if name in SLOTS and any(SLOTS[name](np.dtype(d)) != signature(np.dtype(d)) for d in DTYPES):
        raise ValueError(f"slot {name!r} is declared twice, with two signatures")
    SLOTS[name] = signature
    return signature


def slot_address(name, dispatcher, dtype):
    """The address of ``dispatcher`` compiled for slot ``name`` and ``dtype`` (a TypeError when
    it cannot be: a kernel that takes or returns something else)."""
    expected = SLOTS[name](np.dtype(dtype))
    try:
        fn = address(dispatcher, expected)
    except TypingError as e:
        why = str(e).strip().splitlines()
        raise TypeError(f"{getattr(dispatcher, '__name__', dispatcher)} cannot fill the {name!r} slot ({expected}): "
                        f"{why[1] if len(why) > 1 else why[0]}") from None
    return check_slot(name, fn, dtype)


def check_slot(name, fn, dtype):
    """``fn``, an address, once it is known to be compiled for slot ``name`` and ``dtype``
    (``address`` records what compiled where); a TypeError otherwise: the engine never puts an
    address in a table or a tuple slot it was not compiled for."""
    if not JIT:
        return fn
    expected, got = SLOTS[name](np.dtype(dtype)), SIGNATURES.get(fn)
    if got != expected:
        raise TypeError(f"the kernel at {fn:#x} was compiled as {got}, but the {name!r} slot is {expected}")
    return fn


def _slot_signature(slot_type, args):
    """The slot's signature that ``args`` (a tuple type) matches; a TypingError otherwise."""
    name = slot_type.literal_value
    if name not in SLOTS:
        raise TypingError(f"call: no slot {name!r} (slots: {', '.join(sorted(SLOTS))})")
    given = tuple(types.unliteral(t) for t in args.types)
    choices = [SLOTS[name](np.dtype(d)) for d in DTYPES]
    for signature in choices:
        if given == tuple(signature.args):
            return signature
    raise TypingError(f"call({name!r}, ...): {len(given)} arguments ({', '.join(map(str, given))}), but a {name} "
                      f"kernel takes {len(choices[0].args)}: {choices[0].args} or {choices[1].args}")


def _call_slot_python(slot_name, kernel, args):
    return kernel(*args)


@intrinsic_with_twin(_call_slot_python)
def call(typingctx, slot_name, kernel, args):
    """call(slot, kernel, args): run the compiled kernel at address ``kernel`` on the tuple
    ``args`` and return what it returns. ``slot`` (a constant string) names what is called:
    the arguments' types must be exactly that slot's signature for one dtype (``SLOTS``), or
    the caller fails to compile (a TypingError), so a driver can never call a kernel with
    arguments it does not take. (In Python, ``kernel`` is a callable.)"""
    if not (isinstance(slot_name, types.StringLiteral) and isinstance(kernel, types.Integer)
            and isinstance(args, types.BaseTuple)):
        return None  # (Numba retries with the constant string as a literal)
    signature = _slot_signature(slot_name, args)
    restype = signature.return_type
    through = _through_address(restype)

    def codegen(context, builder, sig, llargs):
        return through(context, builder, types.none(sig.args[1], sig.args[2]), llargs[1:])
    return restype(slot_name, kernel, args), codegen


@intrinsic_with_twin(_call_python)
def call_checked(typingctx, kernel, args):
    """call_checked(kernel, args): as ``call`` with no slot, for a kernel that returns nothing;
    only for ``invoke``, whose caller (``run``) has checked the arguments against the kernel's
    compiled signature."""
    if isinstance(kernel, types.Integer) and isinstance(args, types.BaseTuple):
        return types.none(kernel, args), _through_address(types.none)


@intrinsic_with_twin(_call_python)
def call_checked_value(typingctx, kernel, args):
    """As ``call_checked``, for a kernel that returns a float64 (``invoke_value``)."""
    if isinstance(kernel, types.Integer) and isinstance(args, types.BaseTuple):
        return types.float64(kernel, args), _through_address(types.float64)


@intrinsic_with_twin(lambda: 0)
def flush_subnormals(typingctx):
    """flush_subnormals() -> the caller's floating-point mode: from here on, a result in this
    thread that would be a subnormal float is zero instead (x86-64 FTZ; elsewhere nothing
    changes). Restore the mode with ``restore_fp`` before returning. Subnormals take microcode
    paths 10-100x slower: momentum buffers of parameters whose gradient is exactly zero decay
    into them, and a 784-256-128-10 step at batch 32 went from 0.5 to 1.3 ms after 800 steps.
    Inputs keep their values (no DAZ: with it, inf times a subnormal weight would be NaN).
    XLA flushes too. (Plain Python, profile: nothing to set.) An exception on the way out
    leaves FTZ off (``clear_flush``: IEEE's default, which a caller that had set FTZ itself
    would have to set again)."""
    def codegen(context, builder, signature, args):
        if not X86:
            return context.get_constant(types.int32, 0)
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        _mxcsr(builder, "stmxcsr", slot)
        old = builder.load(slot)
        ftz = ir.Constant(ir.IntType(32), _FTZ)
        unset = builder.icmp_unsigned("==", builder.and_(old, ftz), ir.Constant(ir.IntType(32), 0))
        with builder.if_then(unset, likely=False):  # a driver called by a driver finds it set already
            builder.store(builder.or_(old, ftz), slot)
            _mxcsr(builder, "ldmxcsr", slot)
        return old
    return types.int32(), codegen


@intrinsic_with_twin(lambda mode: None)
def restore_fp(typingctx, mode):
    """restore_fp(mode): put back the floating-point mode ``flush_subnormals`` returned."""
    def codegen(context, builder, signature, args):
        if X86:
            mode = args[0]
            unset = builder.icmp_unsigned("==", builder.and_(mode, ir.Constant(ir.IntType(32), _FTZ)),
                                          ir.Constant(ir.IntType(32), 0))
            with builder.if_then(unset, likely=False):  # only the call that set FTZ clears it
                slot = cgutils.alloca_once_value(builder, mode)
                _mxcsr(builder, "ldmxcsr", slot)
        return context.get_dummy_value()
    return types.none(types.int32), codegen


@kernel
def invoke(kernel, args):
    """Python's way into a kernel that has no entry from Python: ``call`` it by address, with
    subnormals flushed as in training."""
    mode = flush_subnormals()
    call_checked(kernel, args)
    restore_fp(mode)


@kernel
def invoke_value(kernel, args):
    """As ``invoke``, for a kernel that returns a float64."""
    mode = flush_subnormals()
    value = call_checked_value(kernel, args)
    restore_fp(mode)
    return value


@functools.cache
def _expected(declared_args):
    """Per declared argument: ("array", NumPy dtype, ndim), or ("float" | "int" | "bool",)."""
    kinds = []
    for t in declared_args:
        if isinstance(t, types.Array):
            kinds.append(("array", numba.np.numpy_support.as_dtype(t.dtype), t.ndim))
        elif isinstance(t, types.Boolean):
            kinds.append(("bool",))
        elif isinstance(t, types.Integer):
            kinds.append(("int",))
        elif isinstance(t, types.Float):
            kinds.append(("float",))
        else:
            raise TypeError(f"kernels called from Python take arrays and numbers, not {t}")
    return tuple(kinds)


_NUMBERS = {"float": (float, int, np.floating, np.integer), "int": (int, np.integer), "bool": (bool, np.bool_)}
_CONVERT = {"float": float, "int": int, "bool": bool}


def _argument(value, expected):
    """``value`` as the kernel reads it, or None when it does not fit ``expected``. Numbers are
    converted to the declared type (passed as they are, an int would be read as a float's
    bits); arrays must match dtype, dimensions and C layout, and carry no mask."""
    kind = expected[0]
    if kind == "array":
        ok = (isinstance(value, np.ndarray) and not isinstance(value, np.ma.MaskedArray)
              and value.dtype == expected[1] and value.ndim == expected[2] and value.flags.c_contiguous
              and value.flags.aligned)
        return value if ok else None
    if (isinstance(value, _NUMBERS[kind]) and not isinstance(value, (np.timedelta64, np.datetime64))
            and (kind == "bool" or not isinstance(value, (bool, np.bool_)))):
        return _CONVERT[kind](value)
    return None


def run(dispatcher, signature, *args):
    """Call the kernel ``dispatcher`` compiled for ``signature`` from Python (public wrappers,
    ``fastnn profile``): through ``invoke``, since kernels have no Python entry of their own.
    The arguments must match the signature (dtype, dimensions, C layout; numbers are
    converted to the declared type): checked here, so a wrong call is an error, never memory
    read as something else. Writability is the caller's to check (a kernel's signature does
    not say which arrays it writes). Kernels return nothing or a float64."""
    if not JIT:
        return dispatcher(*args)
    trampoline, fn, args = checked(dispatcher, signature, args)
    return trampoline(fn, args)


def checked(dispatcher, signature, args):
    """``(trampoline, address, arguments)`` for calling ``dispatcher`` as ``trampoline(address,
    arguments)`` (what ``run`` does), after checking and converting ``args`` (``_argument``)."""
    fn = address(dispatcher, signature)
    declared = SIGNATURES[fn]
    kinds = _expected(tuple(declared.args))
    converted = tuple(map(_argument, args, kinds)) if len(args) == len(kinds) else None
    if converted is None or any(c is None for c in converted):
        raise TypeError(f"{dispatcher.__name__} takes {declared.args}, got ({', '.join(map(_describe, args))})")
    if declared.return_type == types.none:
        return _invoke_none, fn, converted
    if declared.return_type != types.float64:
        raise TypeError(f"kernels called from Python return nothing or a float64, not {declared.return_type}")
    return invoke_value, fn, converted


def _describe(value):
    if isinstance(value, np.ndarray):
        layout = "C" if value.flags.c_contiguous else "not C-contiguous"
        return f"{type(value).__name__}({value.dtype}, {value.ndim}-D, {layout})"
    return type(value).__name__


def _invoke_none(fn, args):
    invoke(fn, args)


def run_by_types(dispatcher, *args):
    """Call a kernel without a Python entry from Python, compiled for its arguments' types."""
    argtypes = tuple(numba.typeof(a) for a in args)
    dispatcher.compile(argtypes)
    return run(dispatcher, dispatcher.overloads[argtypes].signature, *args)


def raw_rows_of(a):
    """The bytes of each row of the C-contiguous 1-D or 2-D ``a``: an (N, row bytes) uint8 view.
    Drivers take targets this way, whatever their dtype (integer labels, float targets), so
    one compiled driver serves every loss; the loss reads them back with ``typed_rows``.
    (0.23 us, against 0.32 for ``a.view(np.uint8).reshape(...)``.)"""
    if not a.flags.c_contiguous or a.ndim not in (1, 2):
        raise ValueError(f"raw rows need a C-contiguous 1-D or 2-D array, got shape {a.shape}")
    return np.ndarray((a.shape[0], a.nbytes // a.shape[0] if a.shape[0] else 0), np.uint8, a)


def _typed_rows_python(raw, like):
    dtype = like.dtype if isinstance(like, np.ndarray) else np.dtype(like)
    return raw.view(dtype).reshape(raw.shape[0], -1)


@intrinsic_with_twin(_typed_rows_python)
def typed_rows(typingctx, raw, like):
    """typed_rows(raw, like): ``raw_rows_of``' bytes read as ``like``'s dtype (an array, or a
    NumPy scalar type such as np.int64): an (N, row bytes / itemsize) view. A row whose bytes
    are not a whole number of items is an error (IndexError)."""
    dtype = like.dtype if isinstance(like, types.Array) else getattr(like, "instance_type", None)
    if not (isinstance(raw, types.Array) and raw.dtype == types.uint8 and raw.ndim == 2 and raw.layout == "C"
            and isinstance(dtype, types.Number)):
        return None
    result = types.Array(dtype, 2, "C")

    def codegen(context, builder, signature, args):
        from numba.np.arrayobj import make_array, populate_array
        src = make_array(raw)(context, builder, args[0])
        rows, row_bytes = cgutils.unpack_tuple(builder, src.shape, 2)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(context.get_data_type(dtype)))
        with cgutils.if_unlikely(builder, builder.icmp_signed("!=", builder.srem(row_bytes, itemsize),
                                                              context.get_constant(types.intp, 0))):
            clear_flush(builder)  # (a driver's own restore_fp will not run)
            context.call_conv.return_user_exc(builder, IndexError, ("target rows are not whole items",))
        data = builder.bitcast(src.data, context.get_data_type(dtype).as_pointer())
        view = make_array(result)(context, builder)
        populate_array(view, data=data, shape=[rows, builder.sdiv(row_bytes, itemsize)], strides=[row_bytes, itemsize],
                       itemsize=itemsize, meminfo=None)
        return view._getvalue()
    return result(raw, like), codegen


def build_view(context, builder, flat_type, flat, start, shape, used=None):
    """Codegen: a C-contiguous view of ``shape`` (intp values) into the 1-D array ``flat`` from
    element ``start``. No reference: the caller keeps ``flat`` alive. Under NUMBA_BOUNDSCHECK
    a view reaching outside ``flat`` is an IndexError (unless ``used``, an i1, says the view
    will not be used); otherwise the callers' layout (the engine's) is trusted."""
    from numba.np.arrayobj import make_array, populate_array

    src = make_array(flat_type)(context, builder, flat)
    if config.BOUNDSCHECK:
        end = start
        size = context.get_constant(types.intp, 1)
        for extent in shape:
            size = builder.mul(size, extent)
        end = builder.add(start, size)
        (nitems,) = cgutils.unpack_tuple(builder, src.shape, 1)
        outside = builder.or_(builder.icmp_signed("<", start, context.get_constant(types.intp, 0)),
                              builder.icmp_signed(">", end, nitems))
        if used is not None:
            outside = builder.and_(outside, used)
        with cgutils.if_unlikely(builder, outside):
            clear_flush(builder)
            context.call_conv.return_user_exc(builder, IndexError, ("a layer view reaches outside its buffer",))
    view_type = types.Array(flat_type.dtype, len(shape), "C")
    view = make_array(view_type)(context, builder)
    itemsize = src.itemsize
    strides, stride = [], itemsize
    for size in reversed(shape[1:]):
        strides.insert(0, stride)
        stride = builder.mul(stride, size)
    strides.insert(0, stride)
    populate_array(view, data=builder.gep(src.data, [start]), shape=list(shape), strides=strides,
                   itemsize=itemsize, meminfo=None)
    return view._getvalue()

