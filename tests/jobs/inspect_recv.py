"""Connect to 127.0.0.1:PORT and wait for a reply that never comes (a stalled HTTP call).

With `--timeout SECONDS` the socket has a timeout, so CPython waits in poll() before recv().
"""

import socket
import sys


def wait_for_reply(connection: socket.socket) -> bytes:
    return connection.recv(1024)


connection = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
if sys.argv[2:3] == ["--timeout"]:
    connection.settimeout(float(sys.argv[3]))
print("connected", flush=True)
wait_for_reply(connection)
