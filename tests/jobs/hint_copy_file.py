"""Copy SOURCE to DESTINATION with shutil, as a job publishing an export would."""

import shutil
import sys

source, destination = sys.argv[1], sys.argv[2]
shutil.copyfile(source, destination)
print(f"copied {source} to {destination}", flush=True)
