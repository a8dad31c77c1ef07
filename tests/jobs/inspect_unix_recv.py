"""Connect to the Unix socket at PATH and wait for a reply that never comes."""

import socket
import sys


def wait_for_reply(connection: socket.socket) -> bytes:
    return connection.recv(1024)


connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
connection.connect(sys.argv[1])
print("connected", flush=True)
wait_for_reply(connection)
