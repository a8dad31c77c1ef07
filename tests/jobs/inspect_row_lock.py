"""Wait for a row lock held by someone else: `SELECT … FOR UPDATE` on inspect_lock row ID."""

import sys

import pymysql


def wait_for_row_lock(connection: pymysql.Connection, row_id: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM inspect_lock WHERE id = %s FOR UPDATE", (row_id,))


connection = pymysql.connect(host="127.0.0.1", port=3306, user="root", database="test")
with connection.cursor() as cursor:
    cursor.execute("SET SESSION innodb_lock_wait_timeout = 120")
connection.begin()
print("locking", flush=True)
wait_for_row_lock(connection, int(sys.argv[1]))
