"""The base layer every folder may import and that imports none of them.

``errors`` (the one error root), ``commands`` (every click command's one error path and exit codes),
``outputs`` (atomic files and directories, output locks), ``procs`` (worker processes that die with their
parent), ``redact`` (no secret in any output), ``lazy`` (entry points a package imports on first use).
``__version__`` is the one owner of the package version (pyproject reads it).
"""

__version__ = "0.1.0"
