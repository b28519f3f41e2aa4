"""The MicroPython VM harness for tests: ``metal.host.mpvm`` (shared with ``metal bench``).

Tests import it as ``mpvm`` (tests/ is on pythonpath) — see metal.host.mpvm's docstring
for the API and an example.
"""

from metal.host.mpvm import *  # noqa: F401,F403
from metal.host.mpvm import __all__  # noqa: F401
