import sys

from storage.recorder import main

sys.exit(main())
