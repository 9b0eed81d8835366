"""Files and data: model and checkpoint files (read header first), datasets, tables."""
