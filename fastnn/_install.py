"""How to install fastnn and its extras: every hint the library prints names this project's own
distribution. ``fastnn`` on the package index is an unrelated project; this one is published as
``fastnn-cpu`` (the import name stays ``fastnn``)."""

DISTRIBUTION = "fastnn-cpu"


def install_hint(extra: str) -> str:
    """The command that installs ``extra``: from the index, or from a checkout of this project."""
    return f'pip install "{DISTRIBUTION}[{extra}]" (in a checkout of fastnn: pip install ".[{extra}]")'
