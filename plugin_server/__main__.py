"""`python -m plugin_server`."""

import os
import sys

from plugin_server.cli import main
from plugin_server.plugins.pool import sandbox_threads_alive

if __name__ == "__main__":
    code = main()
    if sandbox_threads_alive():
        # A plugin stuck inside C code keeps its abandoned sandbox's thread running, and the
        # interpreter's own exit would wait for it: leave without that wait, all else is closed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
