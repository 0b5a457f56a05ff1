"""`python -m plugin_server`."""

import sys

from plugin_server.cli import main

if __name__ == "__main__":
    sys.exit(main())
