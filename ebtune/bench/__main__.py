import sys

from ebtune.bench.latency import main

sys.exit(main())
