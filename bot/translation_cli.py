"""``python -m bot translation install FILE.argosmodel...`` and ``python -m bot translation list``.

Packages come from local files only; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bot.settings import Settings
from bot.translation import LANGUAGES, Translator


def main(argv: list[str], settings: Settings | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot translation",
                                     description="Offline translation packages (argostranslate).")
    sub = parser.add_subparsers(dest="action", required=True)
    install = sub.add_parser("install", help="install .argosmodel files from local paths")
    install.add_argument("files", nargs="+", type=Path, metavar="FILE.argosmodel")
    sub.add_parser("list", help="installed packages and the language pairs they allow")
    args = parser.parse_args(argv)
    settings = settings or Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    translator = Translator.from_settings(settings)
    if args.action == "install":
        try:
            installed = translator.install(args.files)
        except ValueError as exc:
            print(f"not installed: {exc}")
            return 1
        for package in installed:
            print(f"installed {package.source} -> {package.target} ({package.version}) in {package.path}")
    return _list(translator)


def _list(translator: Translator) -> int:
    print(f"packages folder: {translator.packages_dir}")
    pairs = translator.installed_pairs()
    if not pairs:
        print("no translation packages installed: replies are not machine-translated")
        return 0
    print("installed:")
    for source, target in pairs:
        print(f"  {source} -> {target}")
    pivots = {pair: via for pair, via in translator.available_routes().items() if via}
    if pivots:
        print("through English:")
        for (source, target), via in sorted(pivots.items()):
            print(f"  {source} -> {target} (via {' -> '.join(via)})")
    known = {code for pair in translator.available_routes() for code in pair}
    unknown = sorted(known - set(LANGUAGES))
    if unknown:
        print(f"not project languages (unused): {', '.join(unknown)}")
    return 0
