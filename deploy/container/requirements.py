"""Write the image build's requirement files from pyproject.toml (used by deploy/Containerfile).

The build installs these before it copies the code, so a change to the code reuses the layer
with every dependency instead of downloading them again.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

EXTRAS = ("fast", "ldap")  # optional dependencies the image carries (uvloop, bonsai)


def main(pyproject: str, build_requirements: str, requirements: str) -> int:
    project = tomllib.loads(Path(pyproject).read_text())
    Path(build_requirements).write_text("\n".join(project["build-system"]["requires"]) + "\n")
    runtime = list(project["project"]["dependencies"])
    for extra in EXTRAS:
        runtime += project["project"]["optional-dependencies"][extra]
    Path(requirements).write_text("\n".join(runtime) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
