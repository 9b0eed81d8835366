"""Hand-written Numba kernels. Public names are checking wrappers; ``_name`` is the bare kernel.

Every public kernel has a NumPy twin of the same name in ``fastnn.reference``. Each layer kind
is defined whole in its module here (``kind.py`` says what a kind declares): its kernels must
live in this folder, whose sources key the compiled-code cache (``_jit``), and a kind is one
module, so its class, NumPy twin and ONNX form sit beside them.
"""
from .activations import activation_backward, activation_forward
from .dense import dense_backward, dense_forward
from .dropout import dropout_backward, dropout_forward
from .layernorm import layernorm_backward, layernorm_forward
from .losses import binary_cross_entropy, l2_penalty, mse, poisson, softmax_cross_entropy
from .optimizers import adam_update, optimizer_update, sgd_update

KERNELS = ("activation_forward", "activation_backward", "dense_forward", "dense_backward", "layernorm_forward",
           "layernorm_backward",
           "softmax_cross_entropy", "mse", "binary_cross_entropy", "poisson", "l2_penalty", "sgd_update", "adam_update", "optimizer_update", "dropout_forward", "dropout_backward")

__all__ = list(KERNELS)
