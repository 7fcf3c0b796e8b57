import sys

from conch.cli.server import main

sys.exit(main())
