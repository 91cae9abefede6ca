"""What a run ate, proven from its records: ``audit-run`` (and ``--verify``: the receipt chain), ``trace``,
the report.

Imports ``trainer.core`` only (the run log, checkpoints, config); export and the CLI build on it.
"""
