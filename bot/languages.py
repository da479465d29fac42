"""The shipped languages."""

from __future__ import annotations

LANGUAGES: tuple[str, ...] = ("ja", "ja-easy", "en", "zh", "vi", "ko", "pt", "ne", "tl", "id", "es")
"""Every shipped language code; ``ja-easy`` is easy Japanese (やさしい日本語)."""

DEFAULT_LANGUAGE = "en"

FALLBACK_CHAIN: dict[str, tuple[str, ...]] = {"ja-easy": ("ja-easy", "ja")}
"""Where a text is missing in a language, the next language to try (only used in development;
``make kb-check`` refuses a knowledge base with missing languages)."""


def chain(language: str) -> tuple[str, ...]:
    """Languages to try for a text, best first."""
    return (*FALLBACK_CHAIN.get(language, (language,)), "en")
