"""Write names into a latin-1 export, as code feeding a legacy system does."""

import os
import sys
from pathlib import Path

name = sys.argv[1]
export = Path(os.environ["TMPDIR"]) / "customers.csv"
with export.open("w", encoding="latin-1") as output:
    output.write(f"id;name\n1;{name}\n")
