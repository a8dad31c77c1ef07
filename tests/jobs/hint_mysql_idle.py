"""Hold a MariaDB connection idle past the session's wait_timeout, then use it again."""

import sys
import time

import pymysql

host, port = sys.argv[1], int(sys.argv[2])
connection = pymysql.connect(host=host, port=port, user="root", database="test")
with connection.cursor() as cursor:
    cursor.execute("SET SESSION wait_timeout = 1")
print("connected; working for 3s without a query", flush=True)
time.sleep(3)
with connection.cursor() as cursor:
    cursor.execute("SELECT 1")
