"""The compiled path of one network (``core``: layer table, workspaces, builds) and the thread
rules (``threads``). Imports only ``fastnn.kernels``."""
from .core import DRIVERS, LOSS_KERNELS, Engine, raw_rows_of  # noqa: F401  (fastnn.engine.Engine, as before)
