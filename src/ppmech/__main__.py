import sys

from ppmech.cli import main

sys.exit(main())
