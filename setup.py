"""Package discovery for the one `metal` distribution.

The repository folders core/, host/ and boards/ are the packages metal.core,
metal.host and metal.boards; every folder below them with an __init__.py is a
subpackage. Listing them here by walking the tree keeps new subpackages from
being left out of the wheel (tests/test_packaging.py checks the result).
"""

from pathlib import Path

from setuptools import setup

ROOTS = {"core": "metal.core", "host": "metal.host", "boards": "metal.boards"}
HERE = Path(__file__).resolve().parent


def _packages() -> list[str]:
    found = []
    for folder, name in ROOTS.items():
        for init in sorted((HERE / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(HERE / folder)
            found.append(".".join((name, *rel.parts)))
    return found


setup(
    packages=_packages(),
    package_dir={name: folder for folder, name in ROOTS.items()},
    package_data={"metal.host": ["mpvm/*.mjs", "mpvm/*.upy"]},
)
