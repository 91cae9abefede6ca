"""Print the commands of README.md's first ```bash block, one a line, exactly as a user would type them.

Comments and blank lines are left out and ``\\`` continuations joined; `.ci/run` runs what this prints, and
tests/test_readme.py checks it, so the README's commands and CI's cannot drift apart.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def readme_commands(readme: str | Path, block: int = 0) -> list[str]:
    """The commands of the ``block``-th ```bash block of ``readme``."""
    blocks = re.findall(r"^```bash\n(.*?)^```", Path(readme).read_text(), re.S | re.M)
    lines = re.sub(r"\\\n", " ", blocks[block]).splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


if __name__ == "__main__":
    print("\n".join(readme_commands(sys.argv[1] if len(sys.argv) > 1 else "README.md")))
