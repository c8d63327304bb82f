import sys

from agents.server import main

sys.exit(main())
