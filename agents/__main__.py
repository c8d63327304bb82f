import sys

from agents.service import main

sys.exit(main())
