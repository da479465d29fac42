"""Offline machine translation with argostranslate, from packages installed from local files.

Nothing here downloads anything. argostranslate reads its settings from the environment when it is
first imported, so :class:`Translator` sets that environment (its own data, config and cache folders,
CPU, a spaCy sentence splitter whose cache is pre-filled) just for the import, which happens once per
process in a background thread (``start()``), never on the request path. Importing argostranslate
costs seconds and hundreds of MB (it pulls torch, stanza and spaCy).

Project language codes are used throughout. ``ja-easy`` (Easy Japanese) reads as ``ja`` when it is
the source; as a target there is no machine translation. A pair without a direct package goes
through English when both halves are installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.settings import Settings

log = logging.getLogger("bot.translation")

PIVOT = "en"
EASY_JAPANESE = "ja-easy"
LANGUAGES = ("ja", "ja-easy", "en", "zh", "vi", "ko", "pt", "ne", "tl", "id", "es")

_IMPORT_LOCK = threading.Lock()
_INSTALL_LOCK = threading.Lock()


@dataclass(frozen=True)
class Translation:
    """A translated text.

    Attributes:
        text: The translation (the input itself when source and target are the same language).
        source: Project code of the source language, as asked.
        target: Project code of the target language.
        via: Pivot languages the text went through, e.g. ``("en",)``; empty for a direct package.
    """

    text: str
    source: str
    target: str
    via: tuple[str, ...] = ()


@dataclass(frozen=True)
class InstalledPackage:
    """One installed translation package, read from its ``metadata.json``."""

    source: str
    target: str
    version: str
    path: Path


def _machine_code(code: str) -> str:
    return "ja" if code == EASY_JAPANESE else code


def read_installed(packages_dir: Path) -> dict[tuple[str, str], InstalledPackage]:
    """The translation packages under ``packages_dir`` by (source, target); newest version wins."""
    found: dict[tuple[str, str], InstalledPackage] = {}
    if not packages_dir.is_dir():
        return found
    for folder in sorted(packages_dir.iterdir()):
        metadata_file = folder / "metadata.json"
        if not metadata_file.is_file():
            continue
        try:
            metadata = json.loads(metadata_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("translation package %s: unreadable metadata.json", folder.name)
            continue
        source, target = metadata.get("from_code"), metadata.get("to_code")
        if metadata.get("type", "translate") != "translate" or not isinstance(source, str) or not isinstance(
            target, str
        ):
            continue
        if not (folder / "model").is_dir():
            log.warning("translation package %s: no model folder", folder.name)
            continue
        package = InstalledPackage(source, target, str(metadata.get("package_version", "")), folder)
        current = found.get((source, target))
        if current is None or _version_key(package.version) >= _version_key(current.version):
            found[(source, target)] = package
    return found


def _version_key(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def routes(pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, ...]]:
    """Every (source, target) reachable from the installed ``pairs``, with its pivots (``()`` = direct)."""
    direct = set(pairs)
    found: dict[tuple[str, str], tuple[str, ...]] = {pair: () for pair in direct}
    for source, middle in direct:
        if middle != PIVOT:
            continue
        for middle2, target in direct:
            if middle2 == PIVOT and target != source and (source, target) not in found:
                found[(source, target)] = (PIVOT,)
    return found


class Translator:
    """Translates between project languages with the argos packages in one folder.

    Build it with :meth:`from_settings`; call :meth:`start` once at start-up (it loads argostranslate
    in a background thread); then :meth:`translate` from any task. Thread-safe.
    """

    def __init__(self, home: Path, *, threads: int = 1) -> None:
        """Args:
        home: argos folder; packages live in ``home/packages``, argos's own state in ``home/state``.
        threads: CPU threads per translation model.
        """
        self.home = home
        self.packages_dir = home / "packages"
        self.threads = max(1, threads)
        self._lock = threading.Lock()
        self._pair_locks: dict[tuple[str, str], threading.Lock] = {}
        self._loaded: Future[Any] | None = None
        self._installed = read_installed(self.packages_dir)
        self._models: dict[tuple[str, str], tuple[Path, Any]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Translator:
        """The translator for these settings (``translation_dir`` or ``<data_dir>/argos``)."""
        return cls(settings.translation_dir or settings.data_dir / "argos", threads=settings.translation_threads)

    # --- what is installed -------------------------------------------------------------------

    def installed_pairs(self) -> list[tuple[str, str]]:
        """The installed (source, target) packages, in argos codes (``ja``, ``en``, ...)."""
        with self._lock:
            return sorted(self._installed)

    def available_routes(self) -> dict[tuple[str, str], tuple[str, ...]]:
        """Every pair that can be translated and its pivots (``()`` = direct package)."""
        return routes(self.installed_pairs())

    def can_translate(self, source: str, target: str) -> bool:
        """Whether :meth:`translate` has a way from ``source`` to ``target`` (project codes)."""
        return self._route(source, target) is not None

    def _route(self, source: str, target: str) -> tuple[str, ...] | None:
        if target == EASY_JAPANESE:
            return () if source == EASY_JAPANESE else None
        source = _machine_code(source)
        if source == target:
            return ()
        return self.available_routes().get((source, target))

    def refresh(self) -> None:
        """Re-read the packages folder (after an install)."""
        installed = read_installed(self.packages_dir)
        with self._lock:
            self._installed = installed
            self._models = {pair: (path, model) for pair, (path, model) in self._models.items()
                            if pair in installed and installed[pair].path == path}

    # --- loading argostranslate ----------------------------------------------------------------

    def start(self) -> Future[Any]:
        """Load argostranslate in a background thread, once; later calls return the same future.

        With no package installed there is nothing to translate with: argostranslate (hundreds of MB)
        stays unloaded and the returned future is already done (restart after installing packages).
        """
        if not self.installed_pairs():
            with self._lock:
                if self._loaded is not None:
                    return self._loaded
            log.info("no translation packages in %s: replies are not machine-translated", self.packages_dir)
            nothing: Future[Any] = Future()
            nothing.set_result(None)
            return nothing
        return self._loading()

    def _loading(self) -> Future[Any]:
        with self._lock:
            if self._loaded is None:
                self._loaded = Future()
                threading.Thread(target=self._load, name="argos-load", daemon=True).start()
            return self._loaded

    @property
    def ready(self) -> bool:
        """True once argostranslate is loaded (or failed to load)."""
        return self._loaded is not None and self._loaded.done()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until argostranslate is loaded; False if it failed or the time ran out."""
        future = self.start()
        try:
            future.result(timeout)
        except Exception:
            return False
        return True

    def _load(self) -> None:
        assert self._loaded is not None
        started = time.monotonic()
        try:
            module = load_argos(self.home, self.threads)
        except BaseException as exc:
            log.error("argostranslate could not be loaded: %s", type(exc).__name__)
            self._loaded.set_exception(exc)
            return
        log.info("argostranslate loaded in %.1f s; %d packages in %s", time.monotonic() - started,
                 len(self._installed), self.packages_dir)
        self._loaded.set_result(module)

    # --- installing --------------------------------------------------------------------------

    def install(self, files: Sequence[Path]) -> list[InstalledPackage]:
        """Install ``.argosmodel`` files from local paths into this translator's folder.

        Loads argostranslate in the calling thread if needed (a command-line or test path).

        Raises:
            ValueError: a file is not an argos translation package.
        """
        folders = [_check_package_file(Path(file)) for file in files]
        argos = self._loading().result()
        self.packages_dir.mkdir(parents=True, exist_ok=True)
        with _INSTALL_LOCK, _argos_packages_dir(argos, self.packages_dir):
            for file in files:
                argos.package.install_from_path(Path(file))
        self.refresh()
        with self._lock:
            return [package for package in self._installed.values() if package.path.name in folders]

    # --- translating -------------------------------------------------------------------------

    async def translate(self, text: str, source: str, target: str) -> Translation | None:
        """Translate ``text``; None when no package path exists or the translation failed.

        Runs in a worker thread; waits (without blocking the loop) for the load that ``start()`` began.
        """
        route = self._route(source, target)
        if route is None:
            return None
        if _machine_code(source) == target or source == target:
            return Translation(text, source, target, ())
        try:
            await asyncio.wrap_future(self._loading())
        except Exception:
            return None
        return await asyncio.to_thread(self.translate_sync, text, source, target)

    def translate_sync(self, text: str, source: str, target: str) -> Translation | None:
        """Blocking :meth:`translate` (loads argostranslate in the calling thread if not loaded yet)."""
        route = self._route(source, target)
        if route is None:
            return None
        machine_source = _machine_code(source)
        if machine_source == target or target == source:
            return Translation(text, source, target, ())
        if not text.strip():
            return Translation(text, source, target, route)
        if not self.wait_ready():
            return None
        hops = [machine_source, *route, target]
        current = text
        started = time.monotonic()
        try:
            for hop_source, hop_target in itertools.pairwise(hops):
                current = self._translate_hop(current, hop_source, hop_target)
        except Exception as exc:
            log.error("translation %s->%s failed: %s", machine_source, target, type(exc).__name__)
            return None
        log.debug("translated %s->%s via %s, %d chars in %.0f ms", machine_source, target, route, len(text),
                  (time.monotonic() - started) * 1000)
        return Translation(current, source, target, route)

    def _translate_hop(self, text: str, source: str, target: str) -> str:
        model, lock = self._model(source, target)
        with lock:
            return str(model.translate(text))

    def _model(self, source: str, target: str) -> tuple[Any, threading.Lock]:
        pair = (source, target)
        with self._lock:
            cached = self._models.get(pair)
            lock = self._pair_locks.setdefault(pair, threading.Lock())
            package = self._installed.get(pair)
        if cached is not None:
            return cached[1], lock
        if package is None:
            raise LookupError(f"no package {source}->{target}")
        argos = self._loading().result()
        with lock:
            with self._lock:
                cached = self._models.get(pair)
            if cached is not None:
                return cached[1], lock
            model = argos.translate.PackageTranslation(
                argos.translate.Language(source, source), argos.translate.Language(target, target),
                argos.package.Package(package.path),
            )
            with self._lock:
                self._models[pair] = (package.path, model)
        return model, lock


def _check_package_file(file: Path) -> str:
    """The package's top folder name, after checking the file is an argos translation package."""
    import zipfile

    if not Path(file).is_file():
        raise ValueError(f"{file}: no such file")
    if not zipfile.is_zipfile(file):
        raise ValueError(f"{file}: not an .argosmodel (zip) file")
    with zipfile.ZipFile(file) as archive:
        metadata_names = [name for name in archive.namelist() if name.count("/") == 1
                          and name.endswith("/metadata.json")]
        if len(metadata_names) != 1:
            raise ValueError(f"{file}: expected one top folder with a metadata.json")
        try:
            metadata = json.loads(archive.read(metadata_names[0]))
        except ValueError as exc:
            raise ValueError(f"{file}: metadata.json is not JSON") from exc
    if metadata.get("type", "translate") != "translate" or not metadata.get("from_code") or not metadata.get(
        "to_code"
    ):
        raise ValueError(f"{file}: not a translation package (type/from_code/to_code)")
    return metadata_names[0].split("/", 1)[0]


@contextlib.contextmanager
def _argos_packages_dir(argos: Any, packages_dir: Path) -> Iterator[None]:
    """argos installs into its import-time ``package_data_dir``; point it at ours for one install."""
    settings = argos.settings
    saved = settings.package_data_dir
    settings.package_data_dir = packages_dir
    try:
        yield
    finally:
        settings.package_data_dir = saved


class _Argos:
    """The imported argostranslate modules, as one handle.

    argos logs the sentences it translates at INFO: its logger is kept at WARNING (no message bodies).
    """

    def __init__(self) -> None:
        import argostranslate.package
        import argostranslate.settings
        import argostranslate.translate

        self.package = argostranslate.package
        self.settings = argostranslate.settings
        self.translate = argostranslate.translate
        logging.getLogger("argostranslate.utils").setLevel(logging.WARNING)


_ARGOS: _Argos | None = None


def argos_environment(home: Path, threads: int) -> dict[str, str]:
    """The environment argostranslate must see at import: no downloads, our folders, CPU."""
    state = home / "state"
    return {
        "ARGOS_PACKAGES_DIR": str(home / "packages"),
        "XDG_DATA_HOME": str(state / "data"),
        "XDG_CONFIG_HOME": str(state / "config"),
        "XDG_CACHE_HOME": str(state / "cache"),
        "ARGOS_DEVICE_TYPE": "cpu",
        "ARGOS_CHUNK_TYPE": "SPACY",
        "ARGOS_INTER_THREADS": "1",
        "ARGOS_INTRA_THREADS": str(threads),
        "ARGOS_MODEL_PROVIDER": "OPENNMT",
        "ARGOS_DEBUG": "0",
        "ARGOS_DEV_MODE": "0",
    }


def prepare_spacy_cache(cache_home: Path) -> None:
    """Pre-fill argos's spaCy cache with a blank multilingual pipeline so argos never downloads one.

    argos then adds spaCy's rule-based sentencizer to it.
    """
    cache = cache_home / "argos-translate" / "spacy"
    marker = cache / "senter" / "model"
    if marker.exists() and (cache / "config.cfg").exists():
        return
    import spacy

    cache.mkdir(parents=True, exist_ok=True)
    spacy.blank("xx").to_disk(cache)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def load_argos(home: Path, threads: int = 1) -> _Argos:
    """Import argostranslate once per process with :func:`argos_environment` (restored afterwards).

    Later calls return the same modules; the folders of the first call are argos's import-time ones,
    which matters only to argos's own global look-ups (this module passes its paths explicitly).
    """
    global _ARGOS
    with _IMPORT_LOCK:
        if _ARGOS is not None:
            return _ARGOS
        environment = argos_environment(home, threads)
        for name in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "ARGOS_PACKAGES_DIR"):
            Path(environment[name]).mkdir(parents=True, exist_ok=True)
        prepare_spacy_cache(Path(environment["XDG_CACHE_HOME"]))
        saved = {name: os.environ.get(name) for name in environment}
        os.environ.update(environment)
        try:
            _ARGOS = _Argos()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        return _ARGOS
