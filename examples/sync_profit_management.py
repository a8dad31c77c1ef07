"""Example batch script: walks the properties and "syncs" their profit figures.

It stands in for the CRM sync of the original troubleshooting guide: it reports progress
through batchjob (a plain line on stderr when run by hand) and logs a few MB, as such
scripts do.
"""

from __future__ import annotations

import argparse
import sys
import time

from batchjob import progress

PROPERTIES = [
    "第一竹石", "第二竹石", "第三竹石", "第四竹石", "第五竹石",
    "第六竹石", "第七竹石", "第八竹石", "第九竹石", "第十竹石",
    "青山ハイツ", "桜ヶ丘レジデンス", "港南タワー", "緑町コート", "若葉荘",
    "白金テラス", "日の出マンション", "朝日ビル", "松風苑", "富士見ハウス",
]  # fmt: skip
DETAIL_LINES = 2500  # per property: about 4 MB of log in all


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", help="sync just this property")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds per property")
    args = parser.parse_args()
    chosen = [args.only] if args.only else PROPERTIES
    for number, name in enumerate(chosen, start=1):
        progress(f"同期中: {name}", current=number - 1, total=len(chosen))
        for line in range(DETAIL_LINES):
            print(f"{name}: month {line % 12 + 1:02d} profit row {line} pushed (HTTP 200)")
        time.sleep(args.pause)
    progress(f"完了: {len(chosen)} 件", current=len(chosen), total=len(chosen))
    print(f"synced {len(chosen)} properties", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
