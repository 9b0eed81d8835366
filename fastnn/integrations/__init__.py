"""Adapters over the API, each loaded only when used: scikit-learn estimators (``sklearn``),
ONNX export (``onnx``), data-parallel training over MPI (``mpi``)."""
