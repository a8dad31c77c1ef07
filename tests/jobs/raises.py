"""Warn a little on stderr, then fail with an uncaught exception two calls deep."""

import sys

for number in range(1, 21):
    print(f"warning {number}: still going", file=sys.stderr)


def parse(record: str) -> int:
    raise ValueError(f"壊れた入力: {record}")


def main() -> None:
    parse("第六竹石")


main()
