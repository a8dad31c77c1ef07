"""The main thread waits on a worker thread that waits on a reply from 127.0.0.1:PORT."""

import socket
import sys
import threading


def fetch_in_thread(port: int) -> None:
    connection = socket.create_connection(("127.0.0.1", port))
    print("connected", flush=True)
    connection.recv(1024)


worker = threading.Thread(target=fetch_in_thread, args=(int(sys.argv[1]),), name="fetcher")
worker.start()
worker.join()
