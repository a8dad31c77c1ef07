"""Example batch script: walks the properties and "syncs" their profit figures.

It stands in for the CRM sync of the original troubleshooting guide; it only prints.
"""

from __future__ import annotations

import argparse
import sys
import time

PROPERTIES = [
    "第一竹石", "第二竹石", "第三竹石", "第四竹石", "第五竹石",
    "第六竹石", "第七竹石", "第八竹石", "第九竹石", "第十竹石",
    "青山ハイツ", "桜ヶ丘レジデンス", "港南タワー", "緑町コート", "若葉荘",
    "白金テラス", "日の出マンション", "朝日ビル", "松風苑", "富士見ハウス",
]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", help="sync just this property")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds per property")
    args = parser.parse_args()
    chosen = [args.only] if args.only else PROPERTIES
    for number, name in enumerate(chosen, start=1):
        print(f"[{number}/{len(chosen)}] 同期中: {name}", flush=True)
        time.sleep(args.pause)
    print(f"synced {len(chosen)} properties", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
