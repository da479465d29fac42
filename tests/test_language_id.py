from __future__ import annotations

import pytest

from bot.language_id import detect, normalise_hint, resolve


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("在留カードをなくしました", "ja"),
        ("ざいりゅうかーど なくしました", "ja-easy"),
        ("I lost my residence card", "en"),
        ("我的在留卡丢了怎么办", "zh"),
        ("Tôi bị mất thẻ cư trú", "vi"),
        ("재류카드를 잃어버렸어요", "ko"),
        ("Eu perdi meu cartão de residência", "pt"),
        ("मेरो रेसिडेन्स कार्ड हरायो", "ne"),
        ("Nawala ko ang residence card ko", "tl"),
        ("Kartu izin tinggal saya hilang", "id"),
        ("Perdí mi tarjeta de residencia", "es"),
    ],
)
def test_detects_every_shipped_language(text: str, language: str) -> None:
    assert detect(text) == language


@pytest.mark.parametrize("text", ["hi", "ok", "visa?", "👍"])
def test_too_short_to_tell(text: str) -> None:
    assert detect(text) is None


def test_saved_choice_wins_over_detection() -> None:
    assert resolve("I lost my residence card", chosen="vi") == ("vi", "en")


def test_kana_means_japanese_even_with_a_hint() -> None:
    assert resolve("ビザ", chosen=None, hint="en")[0] == "ja-easy"


def test_short_text_falls_back_to_previous_then_hint_then_english() -> None:
    assert resolve("ok", chosen=None, previous="pt", hint="es") == ("pt", None)
    assert resolve("ok", chosen=None, previous=None, hint="es-419") == ("es", None)
    assert resolve("ok", chosen=None) == ("en", None)


@pytest.mark.parametrize(("hint", "language"), [("pt-BR", "pt"), ("zh_CN", "zh"), ("fil", "tl"), ("de", None)])
def test_platform_hints(hint: str, language: str | None) -> None:
    assert normalise_hint(hint) == language
