"""The command line (``cli``), ``fastnn bench`` and its peers, ``fastnn profile``, the story and
its plots: tools built on the API."""
