"""`python -m ebtune.bench key=value ...`: the same as `ebtune bench` (torch only)."""
import sys

from ebtune.bench.command import main
from ebtune.errors import ConfigError

try:
    sys.exit(main(sys.argv[1:]))
except ConfigError as e:
    print(f"python -m ebtune.bench: error: {e}", file=sys.stderr)
    sys.exit(2)
