import sys

from ebtune.cli import main

sys.exit(main())
