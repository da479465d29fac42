"""Offline translation with real argostranslate packages built by the project (tests/argos_build.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bot.settings import PROJECT
from bot.translation import Translation, Translator, routes
from tests.argos_build import load_phrases

PHRASES = load_phrases()


def _translate_all(translator: Translator, source: str, target: str) -> list[Translation | None]:
    async def run() -> list[Translation | None]:
        return [await translator.translate(phrase[source], source, target) for phrase in PHRASES]

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("source", "target", "via"),
    [("ja", "en", ()), ("en", "ja", ()), ("vi", "ja", ("en",)), ("ja", "vi", ("en",)), ("vi", "en", ()),
     ("en", "vi", ())],
)
def test_every_phrase_translates_exactly(translator: Translator, source: str, target: str,
                                         via: tuple[str, ...]) -> None:
    results = _translate_all(translator, source, target)
    assert [result.text if result else None for result in results] == [phrase[target] for phrase in PHRASES]
    assert {(result.source, result.target, result.via) for result in results if result} == {(source, target, via)}


def test_help_desk_sentences(translator: Translator) -> None:
    async def run() -> list[Translation | None]:
        return [
            await translator.translate("スタッフと話したいです。", "ja", "en"),
            await translator.translate("Tôi có câu hỏi về việc gia hạn thẻ cư trú.", "vi", "ja"),
            await translator.translate("明日の午前中にお電話します。", "ja", "vi"),
            await translator.translate("入管に必要な書類を持って行ってください。", "ja-easy", "en"),
        ]

    assert asyncio.run(run()) == [
        Translation("I want to talk to staff.", "ja", "en", ()),
        Translation("在留カードの更新について質問があります。", "vi", "ja", ("en",)),
        Translation("Chúng tôi sẽ gọi cho bạn vào sáng mai.", "ja", "vi", ("en",)),
        Translation("Please bring the required documents to the immigration office.", "ja-easy", "en", ()),
    ]


def test_pairs_without_a_model(translator: Translator) -> None:
    assert translator.installed_pairs() == [("en", "ja"), ("en", "vi"), ("ja", "en"), ("vi", "en")]
    assert translator.can_translate("vi", "ja") and translator.can_translate("ja-easy", "vi")
    for source, target in [("ja", "zh"), ("zh", "en"), ("ko", "ja"), ("en", "es")]:
        assert not translator.can_translate(source, target)
        assert asyncio.run(translator.translate("スタッフと話したいです。", source, target)) is None


def test_easy_japanese_is_never_a_machine_target(translator: Translator) -> None:
    for source in ("ja", "en", "vi"):
        assert not translator.can_translate(source, "ja-easy")
        assert asyncio.run(translator.translate(PHRASES[0][source], source, "ja-easy")) is None
    same = asyncio.run(translator.translate("すたっふ と はなしたい です。", "ja-easy", "ja-easy"))
    assert same == Translation("すたっふ と はなしたい です。", "ja-easy", "ja-easy", ())


def test_same_language_is_the_text_itself(tmp_path: Path) -> None:
    empty = Translator(tmp_path / "argos")
    assert empty.installed_pairs() == []
    assert asyncio.run(empty.translate("どんな文でも", "ja", "ja")) == Translation("どんな文でも", "ja", "ja", ())
    assert asyncio.run(empty.translate("Xin chào", "ja-easy", "ja")) == Translation("Xin chào", "ja-easy", "ja", ())
    assert asyncio.run(empty.translate("Hello.", "en", "ja")) is None
    assert empty.start().done() and empty.start().result() is None
    assert not empty.ready, "nothing to translate with: argostranslate is not loaded"


def test_concurrent_translations(translator: Translator) -> None:
    async def run() -> list[Translation | None]:
        jobs = [translator.translate(phrase["vi"], "vi", "ja") for phrase in PHRASES]
        jobs += [translator.translate(phrase["ja"], "ja", "en") for phrase in PHRASES]
        return await asyncio.gather(*jobs)

    texts = [result.text if result else None for result in asyncio.run(run())]
    assert texts == [phrase["ja"] for phrase in PHRASES] + [phrase["en"] for phrase in PHRASES]


def test_start_is_idempotent(translator: Translator) -> None:
    assert translator.start() is translator.start()
    assert translator.ready


def test_a_broken_package_gives_none_and_logs_no_text(translator: Translator, caplog: pytest.LogCaptureFixture) -> None:
    (translator.packages_dir / "translate-ja_en-1_0" / "model" / "model.bin").write_bytes(b"not a model")
    secret = "在留カードの更新について質問があります。"
    with caplog.at_level(logging.DEBUG):
        assert asyncio.run(translator.translate(secret, "ja", "en")) is None
        assert asyncio.run(translator.translate(secret, "ja", "vi")) is None
    assert "translation ja->en failed" in caplog.text
    assert secret not in caplog.text and "question" not in caplog.text
    assert asyncio.run(translator.translate(PHRASES[0]["en"], "en", "ja")) == Translation(
        PHRASES[0]["ja"], "en", "ja", ())


def test_install_refuses_files_that_are_not_packages(tmp_path: Path) -> None:
    translator = Translator(tmp_path / "argos")
    not_zip = tmp_path / "model.argosmodel"
    not_zip.write_text("hello")
    with pytest.raises(ValueError, match=r"not an \.argosmodel"):
        translator.install([not_zip])
    with pytest.raises(ValueError, match="no such file"):
        translator.install([tmp_path / "missing.argosmodel"])
    assert translator.installed_pairs() == []
    assert not translator.ready


def test_routes_pivot_only_through_english() -> None:
    assert routes([("ja", "en"), ("en", "vi"), ("vi", "ko")]) == {
        ("ja", "en"): (), ("en", "vi"): (), ("vi", "ko"): (), ("ja", "vi"): ("en",),
    }


NETWORK_GUARD = textwrap.dedent(
    """
    import asyncio, json, socket, sys
    from pathlib import Path

    attempts = []

    def local(host):
        return str(host) in ("127.0.0.1", "::1", "localhost", "None", "")

    def guard(event, args):
        if event == "socket.connect":
            address = args[1]
            if isinstance(address, tuple) and not local(address[0]):
                attempts.append([event, str(address[0])])
                raise ConnectionRefusedError("network refused by the test")
        elif event == "socket.getaddrinfo" and not local(args[0]):
            attempts.append([event, str(args[0])])
            raise socket.gaierror("name resolution refused by the test")
        elif event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "urllib.Request"):
            attempts.append([event, str(args[0])[:200]])

    sys.addaudithook(guard)

    from bot.settings import Settings
    from bot.translation import Translator

    Translator.from_settings(Settings()).install(sorted(Path(sys.argv[1]).glob("*.argosmodel")))
    translator = Translator.from_settings(Settings())
    translator.start()
    assert translator.wait_ready(120)
    phrase = "明日の午前中にお電話します。"
    result = asyncio.run(translator.translate(phrase, "ja", "vi"))
    back = asyncio.run(translator.translate(result.text, "vi", "ja"))
    print(json.dumps({"text": result.text, "via": result.via, "back": back.text, "attempts": attempts}))
    """
)


def _env(data_dir: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("CONSULT_", "ARGOS_"))}
    env.update(CONSULT_DATA_DIR=str(data_dir), HOME=str(data_dir / "home"), PYTHONPATH=str(PROJECT))
    return env


def test_nothing_touches_the_network(tmp_path: Path, argos_packages: Path) -> None:
    """argostranslate loads, installs and translates with every connection or download refused and recorded."""
    script = tmp_path / "guarded.py"
    script.write_text(NETWORK_GUARD)
    done = subprocess.run([sys.executable, str(script), str(argos_packages)], cwd=PROJECT, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"text": "Chúng tôi sẽ gọi cho bạn vào sáng mai.", "via": ["en"],
                      "back": "明日の午前中にお電話します。", "attempts": []}
    assert not (tmp_path / "home").exists(), "argos wrote outside its folder"


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot", "translation", *args], cwd=PROJECT, env=_env(data_dir),
                          capture_output=True, text=True, timeout=300)


def test_cli_install_and_list(tmp_path: Path, argos_packages: Path) -> None:
    empty = _cli(tmp_path, "list")
    assert empty.returncode == 0, empty.stderr
    assert "no translation packages installed" in empty.stdout

    refused = _cli(tmp_path, "install", str(PROJECT / "pyproject.toml"))
    assert refused.returncode == 1
    assert "not an .argosmodel" in refused.stdout

    files = sorted(str(path) for path in argos_packages.glob("*.argosmodel"))
    installed = _cli(tmp_path, "install", *files)
    assert installed.returncode == 0, installed.stderr
    for pair in ("ja -> en", "en -> ja", "vi -> en", "en -> vi"):
        assert f"installed {pair} (1.0)" in installed.stdout
    assert (tmp_path / "argos" / "packages" / "translate-ja_en-1_0" / "metadata.json").is_file()

    listed = _cli(tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[lines.index("installed:") + 1:lines.index("through English:")] == [
        "  en -> ja", "  en -> vi", "  ja -> en", "  vi -> en"]
    assert lines[lines.index("through English:") + 1:] == ["  ja -> vi (via en)", "  vi -> ja (via en)"]
