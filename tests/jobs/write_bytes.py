"""Write exact bytes: each argument is `FD:HEX`, written with one os.write to that fd."""

import os
import sys

for argument in sys.argv[1:]:
    descriptor, data = argument.split(":")
    os.write(int(descriptor), bytes.fromhex(data))
