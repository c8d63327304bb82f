import sys

from trainer.process import main

sys.exit(main())
