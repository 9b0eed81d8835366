"""ONNX export: a trained network as a graph any ONNX runtime can run (``Sequential.to_onnx``,
``fastnn export``, and the scikit-learn estimators, also inside a ``Pipeline`` through skl2onnx).

The graph is built with the ``onnx`` package (the ``onnx`` extra), from standard operators that
ONNX Runtime runs in float32 and float64 at opset 17: MatMul and Add per layer; Relu, Sigmoid,
Tanh; leaky relu as Max(x, 0.01 x) (ONNX Runtime has no float64 LeakyRelu); gelu in fastnn's own
form, z * Sigmoid(2u) with u = sqrt(2/pi) (z + 0.044715 z^3) (the Gelu operator needs opset 20).
Each layer kind writes its own nodes (``LayerKind.onnx``: LayerNorm from MatMul, Sub, Mul, Sqrt
and Div, which every opset and both dtypes have); a residual block ends in an Add.
Dropout is the identity. The batch dimension is dynamic. A model trained by the command line
carries its preparation into the graph: the input scaling first, then the class labels (a
``label`` output) or the target scaling.

The graph is written once by ``_Builder``, whose two back ends are a standalone ONNX model and
a skl2onnx converter's container.
"""
from __future__ import annotations

import os

import numpy as np

from .._install import install_hint
from ..kernels.kind import INPUT, NO_SKIP

DEFAULT_OPSET = 17
IR_VERSION = 8  # the oldest IR that carries opset 17: ONNX Runtime 1.10 and later read the file


def require_onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: " + install_hint("onnx")) from None
    return onnx


class _Builder:
    """Nodes and constants of one graph, named uniquely; ``node`` returns its output's name."""

    def __init__(self, unique, add_node, add_constant, dtype):
        self.unique, self._add_node, self._add_constant, self.dtype = unique, add_node, add_constant, np.dtype(dtype)

    def const(self, hint, value, dtype=None):
        array = np.asarray(value, dtype=dtype or self.dtype)
        name = self.unique(hint)
        self._add_constant(name, array)
        return name

    def node(self, op, inputs, hint=None, outputs=None, **attrs):
        outputs = outputs or [self.unique(hint or op.lower())]
        self._add_node(op, list(inputs), list(outputs), attrs)
        return outputs[0]


def _network(b, x, model):
    """The layers from input ``x`` to the last layer's outputs (logits for a classifier): each
    layer kind's own nodes (``LayerKind.onnx``) on the output of the layer that feeds it, and
    an Add where a join takes its skip."""
    outs = []
    for k, node in enumerate(model.nodes):
        out = node.layer.onnx(b, x if node.src == INPUT else outs[node.src], str(len(outs)))
        if node.skip != NO_SKIP:
            out = b.node("Add", [out, x if node.skip == INPUT else outs[node.skip]], f"joined{k}")
        outs.append(out)
    return outs[-1]


def _labels(b, index, classes, output):
    """``output`` = classes[index] (class labels of any kind), or the index itself."""
    if classes is None:
        return b.node("Identity", [index], outputs=[output])
    kind = np.asarray(classes).dtype.kind
    table = b.const("classes", np.asarray(classes, dtype=object if kind in "US" else np.int64),
                    dtype=object if kind in "US" else np.int64)
    return b.node("Gather", [table, index], outputs=[output], axis=0)


def _model_graph(b, x, model, probabilities, outputs):
    """Everything after the graph's input for ``Sequential.to_onnx``: the preparation, the
    network, and the head. ``outputs``: the names to give (``output``, and ``label``)."""
    from ..nn.losses import CLASSIFIERS

    prep = model.preparation
    if prep is not None:
        x = b.node("Div", [b.node("Sub", [x, b.const("input_mean", prep.input_mean)]),
                           b.const("input_scale", prep.input_scale)], "scaled")
    out = _network(b, x, model)
    loss = model.loss or "softmax_cross_entropy"
    if loss not in CLASSIFIERS:
        if probabilities:
            raise ValueError(f"this model's loss is {loss!r} (regression): it has no probabilities to export")
        if prep is not None and prep.target_mean is not None:
            out = b.node("Add", [b.node("Mul", [out, b.const("target_scale", prep.target_scale)]),
                                 b.const("target_mean", prep.target_mean)])
        return [b.node("Identity", [out], outputs=[outputs[0]])]  # (Poisson: the log rate, as predict)
    head = "Softmax" if loss == "softmax_cross_entropy" else "Sigmoid"
    result = [b.node(head, [out], outputs=[outputs[0]], **({"axis": 1} if head == "Softmax" else {}))
              if probabilities else b.node("Identity", [out], outputs=[outputs[0]])]
    classes = prep.classes if prep is not None else None
    if loss == "softmax_cross_entropy":
        index = b.node("ArgMax", [out], "index", axis=1, keepdims=0)
    elif model.out_features == 1:  # one logistic output: class 1 when the logit is > 0
        index = b.node("Cast", [b.node("Greater", [b.node("Squeeze", [out, b.const("axis1", [1], np.int64)]),
                                                   b.const("zero", 0.0)])], "index", to=7)
    else:  # multi-label: one 0/1 label per output
        index, classes = b.node("Cast", [b.node("Greater", [out, b.const("zero", 0.0)])], "index", to=7), None
    result.append(_labels(b, index, classes, outputs[1]))
    return result


def _standalone(dtype):
    """A builder that collects a standalone graph, and what it collected."""
    onnx = require_onnx()
    from onnx import numpy_helper

    nodes, constants, counts = [], [], {}

    def unique(hint):
        counts[hint] = counts.get(hint, 0) + 1
        return hint if counts[hint] == 1 else f"{hint}_{counts[hint]}"

    def add_node(op, inputs, outputs, attrs):
        nodes.append(onnx.helper.make_node(op, inputs, outputs, name=unique("node_" + op), **attrs))

    def add_constant(name, array):
        if array.dtype == object:
            tensor = onnx.helper.make_tensor(name, onnx.TensorProto.STRING, array.shape,
                                             [str(v).encode() for v in array.ravel()])
        else:
            tensor = numpy_helper.from_array(array, name)
        constants.append(tensor)
    return _Builder(unique, add_node, add_constant, dtype), nodes, constants


def _finish(nodes, constants, elem, features, outputs, opset, path):
    """The model around a graph's nodes: input ``input`` (N, features), checked in full, written
    atomically to ``path`` when given."""
    onnx = require_onnx()
    graph = onnx.helper.make_graph(nodes, "fastnn", [onnx.helper.make_tensor_value_info(
        "input", elem, ["N", features])], outputs, constants)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                   producer_name="fastnn", ir_version=IR_VERSION)
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        from ..io.files import atomic_write
        with atomic_write(os.fspath(path)) as f:
            f.write(proto.SerializeToString())
    return proto


def model_to_onnx(model, path=None, *, opset=DEFAULT_OPSET, probabilities=False):
    """``Sequential.to_onnx``: build, check (``full_check=True``) and write the graph; returns the
    ``onnx.ModelProto``."""
    onnx = require_onnx()
    from ..kernels._checks import positive_int
    from ..nn.losses import CLASSIFIERS

    opset = positive_int("opset", opset)
    if opset < 13:
        raise ValueError(f"opset {opset} is too old: fastnn exports opset 13 and later (default {DEFAULT_OPSET})")
    elem = onnx.helper.np_dtype_to_tensor_dtype(model.dtype)
    b, nodes, constants = _standalone(model.dtype)
    classify = (model.loss or "softmax_cross_entropy") in CLASSIFIERS
    names = ["probabilities" if probabilities else ("logits" if classify else "output"), "label"]
    produced = _model_graph(b, "input", model, probabilities, names)
    outputs = [onnx.helper.make_tensor_value_info(names[0], elem, ["N", model.out_features])]
    if len(produced) > 1:
        classes = model.preparation.classes if model.preparation is not None else None
        label_type = onnx.TensorProto.STRING if classes is not None and np.asarray(classes).dtype.kind in "US" \
            else onnx.TensorProto.INT64
        multi = model.loss == "binary_cross_entropy" and model.out_features > 1
        outputs.append(onnx.helper.make_tensor_value_info("label", label_type, ["N", model.out_features] if multi
                                                          else ["N"]))
    return _finish(nodes, constants, elem, model.in_features, outputs, opset, path)


# -- scikit-learn ----------------------------------------------------------------------------------

def estimator_graph(b, x, estimator, outputs):
    """The graph of a fitted fastnn.sklearn estimator from input ``x`` (already in the network's
    dtype): ``outputs`` = (label, probabilities) for a classifier, (variable,) for a regressor."""
    model = estimator.model_
    out = _network(b, x, model)
    if not hasattr(estimator, "classes_"):  # a regressor: its prediction (Poisson: the rate, e^output)
        return [b.node("Exp" if model.loss == "poisson" else "Identity", [out], outputs=[outputs[0]])]
    if model.loss == "binary_cross_entropy":  # one logistic output: [1 - p, p]
        p = b.node("Sigmoid", [out])
        proba = b.node("Concat", [b.node("Sub", [b.const("one", [[1.0]]), p]), p], outputs=[outputs[1]], axis=1)
    else:
        proba = b.node("Softmax", [out], outputs=[outputs[1]], axis=1)
    index = b.node("ArgMax", [proba], "index", axis=1, keepdims=0)
    return [_labels(b, index, estimator.classes_, outputs[0]), proba]


def estimator_to_onnx(estimator, path=None, *, opset=DEFAULT_OPSET):
    """``to_onnx`` of a fitted estimator: input ``input`` in the network's dtype; outputs
    ``label`` (the estimator's own classes) and ``probabilities`` (no ZipMap), or ``variable``."""
    onnx = require_onnx()
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(estimator, "model_")
    model = estimator.model_
    elem = onnx.helper.np_dtype_to_tensor_dtype(model.dtype)
    b, nodes, constants = _standalone(model.dtype)
    if hasattr(estimator, "classes_"):
        names = ["label", "probabilities"]
        label_type = onnx.TensorProto.STRING if estimator.classes_.dtype.kind in "USO" else onnx.TensorProto.INT64
        outputs = [onnx.helper.make_tensor_value_info("label", label_type, ["N"]),
                   onnx.helper.make_tensor_value_info("probabilities", elem, ["N", len(estimator.classes_)])]
    else:
        names = ["variable"]
        outputs = [onnx.helper.make_tensor_value_info("variable", elem, ["N", model.out_features])]
    estimator_graph(b, "input", estimator, names)
    return _finish(nodes, constants, elem, model.in_features, outputs, opset, path)


_REGISTERED = False


def register_skl2onnx(*estimators):
    """Teach skl2onnx the fastnn estimators, so that ``skl2onnx.to_onnx`` exports a Pipeline that
    holds one (the classifier's outputs: ``label`` and ``probabilities``, no ZipMap)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from sklearn.base import is_classifier
    from skl2onnx import update_registered_converter
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, Int64TensorType, StringTensorType


    def parser(scope, model, inputs, custom_parsers=None):
        alias = "Fastnn" + type(model).__name__
        op = scope.declare_local_operator(alias, model)
        op.inputs = inputs
        tensor = FloatTensorType if isinstance(inputs[0].type, FloatTensorType) else DoubleTensorType
        if is_classifier(model):
            label_type = StringTensorType if model.classes_.dtype.kind in "USO" else Int64TensorType
            label = scope.declare_local_variable("label", label_type([None]))
            proba = scope.declare_local_variable("probabilities", tensor([None, len(model.classes_)]))
            op.outputs.extend([label, proba])
            return [label, proba]
        variable = scope.declare_local_variable("variable", tensor([None, model.model_.out_features]))
        op.outputs.append(variable)
        return [variable]

    def shapes(operator):
        pass  # declared by the parser

    def converter(scope, operator, container):
        from onnx import TensorProto
        estimator = operator.raw_operator
        model = estimator.model_
        elem = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}

        def add_node(op, inputs, outputs, attrs):
            container.add_node(op, inputs, outputs, name=scope.get_unique_operator_name(op), **attrs)

        def add_constant(name, array):
            if array.dtype == object:
                container.add_initializer(name, TensorProto.STRING, list(array.shape),
                                          [str(v).encode() for v in array.ravel()])
            else:
                proto_type = {np.dtype(np.int64): TensorProto.INT64, **elem}[array.dtype]
                container.add_initializer(name, proto_type, list(array.shape), array.ravel().tolist())

        b = _Builder(scope.get_unique_variable_name, add_node, add_constant, model.dtype)
        source = operator.inputs[0]
        in_type = elem[np.dtype(np.float32 if isinstance(source.type, FloatTensorType) else np.float64)]
        x = source.full_name
        if in_type != elem[model.dtype]:
            x = b.node("Cast", [x], "input_cast", to=elem[model.dtype])
        names = [v.full_name for v in operator.outputs]
        if in_type == elem[model.dtype]:
            estimator_graph(b, x, estimator, names)
            return
        inner = [b.unique("label"), b.unique("probabilities")] if len(names) == 2 else [b.unique("variable")]
        produced = estimator_graph(b, x, estimator, inner)
        if len(names) == 2:
            b.node("Identity", [produced[0]], outputs=[names[0]])
            b.node("Cast", [produced[1]], outputs=[names[1]], to=in_type)
        else:
            b.node("Cast", [produced[0]], outputs=[names[0]], to=in_type)

    for cls in estimators:
        update_registered_converter(cls, "Fastnn" + cls.__name__, shapes, converter, parser=parser)
    _REGISTERED = True

