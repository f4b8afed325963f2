import sys

from vslm.cli import main

sys.exit(main())
