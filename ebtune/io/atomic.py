"""Files written whole or not at all: a reader (or a run stopped mid-write) sees the old file or the new one."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: Path, value: Any) -> None:
    """`value` as indented JSON at `path`, via a temporary file per process renamed over it, so
    sessions sharing a folder never write into each other's temporary file."""
    staging = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    staging.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(staging, path)
