"""Two-way translation in the help desk with small real argos packages (``tests/argos_build.py``).

The packages know only the phrases of ``tests/data/phrases.yml``: ja↔en and vi↔en, so Vietnamese
and Japanese meet through English, as they would with the real models.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from bot.db.models import Message
from bot.helpdesk import QueueFilter
from bot.knowledge import KnowledgeBase
from bot.translation import Translator
from tests.conftest import line_settings, wait_until
from tests.fakes import FakeLine
from tests.test_helpdesk import Desk, LineUser, conversation_of

QUESTION_VI = "Tôi có câu hỏi về việc gia hạn thẻ cư trú."
QUESTION_JA = "在留カードの更新について質問があります。"
REPLY_JA = "明日の午前中にお電話します。"
REPLY_VI = "Chúng tôi sẽ gọi cho bạn vào sáng mai."


@pytest.fixture(scope="module")
def argos_home(tmp_path_factory: pytest.TempPathFactory, argos_packages: Path) -> Path:
    """An argos folder with the test packages installed from their local files (the app's translation_dir)."""
    home = tmp_path_factory.mktemp("argos")
    files = sorted(argos_packages.glob("*.argosmodel"))
    assert files, "tests/argos_build.py built no package"
    Translator(home).install(files)
    return home


@pytest.fixture
def desk(database_url: str, fake_line: FakeLine, make_client: Callable[..., TestClient], dead_engine_url: str,
         argos_home: Path, tmp_path: Path) -> Desk:
    return Desk(make_client(database_url, dead_engine_url, **line_settings(fake_line), translation_dir=argos_home,
                            kb_drafts_dir=tmp_path / "drafts"))


def test_vietnamese_user_and_japanese_staff_through_english(desk: Desk, fake_line: FakeLine,
                                                             kb: KnowledgeBase) -> None:
    user = LineUser(desk.client, fake_line)
    user.say(QUESTION_VI)
    wait_until(lambda: user.texts() == [kb.message("please_wait", "vi")], timeout=20)
    staff = desk.staff("tanaka")
    case_id = desk.helpdesk.take_over(conversation_of(desk, user.user_id).id, staff)

    def translated() -> list[Message]:
        return desk.rows(Message, Message.direction == "in", Message.translation_status == "done")

    wait_until(translated, timeout=120)  # the app's background loop translates, not the webhook
    (message,) = translated()
    assert (message.text, message.text_ja, message.translated_by) == (QUESTION_VI, QUESTION_JA, "argos via en")
    (row,) = desk.helpdesk.queue(QueueFilter(language="vi")).rows
    assert (row.id, row.summary_ja) == (case_id, QUESTION_JA)
    view = desk.helpdesk.case(case_id)
    assert [(line.text, line.text_ja) for line in view.transcript if line.author == "user"] == [
        (QUESTION_VI, QUESTION_JA)
    ]
    assert view.can_translate_reply

    preview = desk.run(desk.helpdesk.preview, case_id, REPLY_JA)
    assert (preview.translation, preview.notice_ja) == (REPLY_VI, None)
    result = desk.run(desk.helpdesk.reply, case_id, staff, REPLY_JA)
    assert result.delivered and result.translated
    (push,) = [c for c in fake_line.calls_to("/v2/bot/message/push") if c.body.get("to") == user.user_id][-1:]
    assert [m["text"] for m in push.body["messages"]] == [
        REPLY_VI, kb.message("staff_reply_translated", "vi") + "\n\n" + REPLY_JA
    ]


def test_staff_may_correct_the_translation_before_sending(desk: Desk, fake_line: FakeLine,
                                                          kb: KnowledgeBase) -> None:
    user = LineUser(desk.client, fake_line)
    user.say(QUESTION_VI)
    wait_until(lambda: user.texts(), timeout=20)
    staff = desk.staff("sato")
    case_id = desk.helpdesk.take_over(conversation_of(desk, user.user_id).id, staff)
    corrected = "Ngày mai chúng tôi sẽ gọi điện cho bạn vào buổi sáng."
    desk.run(desk.helpdesk.reply, case_id, staff, REPLY_JA, corrected)
    assert user.texts()[-2:] == [corrected, kb.message("staff_reply_translated", "vi") + "\n\n" + REPLY_JA]
    with desk.assistant.sessions() as session:
        by = session.scalars(select(Message.translated_by).where(Message.staff_id == staff.id)).all()
    assert set(by) == {"staff"}
