"""``python -m bot chat``: a terminal user talking to a running app over HTTP."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bot.knowledge import KnowledgeBase
from bot.settings import PROJECT
from tests.conftest import LiveServer


def test_terminal_chat_shows_the_answer_and_numbers_buttons(
    live_server: Callable[..., LiveServer], tmp_path: Path, dead_engine_url: str, kb: KnowledgeBase
) -> None:
    server = live_server(f"sqlite:///{tmp_path / 'chat.db'}", dead_engine_url)
    result = subprocess.run(
        [sys.executable, "-m", "bot", "chat", "--url", server.url, "--sender", "terminal-user"],
        input="My friend collapsed and is not breathing\nlanguage please\n",
        capture_output=True, text=True, timeout=60, cwd=PROJECT,
    )
    assert result.returncode == 0, result.stderr
    assert kb.message("emergency_medical", "en").splitlines()[0] in result.stdout
    assert "bot> " + kb.message("please_wait", "en") in result.stdout
