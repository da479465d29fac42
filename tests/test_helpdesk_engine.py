"""The help desk through the really trained Rasa model: cases opened by the conversation, and hand-back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from bot.db.models import Conversation, Escalation, Identity
from bot.helpdesk import HelpDesk
from bot.knowledge import KnowledgeBase
from bot.staff import create_staff
from tests.conftest import Chat, EngineProcess
from tests.test_end_to_end import answer_text

pytestmark = pytest.mark.engine


@pytest.fixture
def client(make_client: Callable[..., TestClient], database_url: str, running_engine: EngineProcess) -> TestClient:
    return make_client(database_url, running_engine.url)


def cases(client: TestClient) -> list[Escalation]:
    with client.app.state.assistant.sessions() as session:  # type: ignore[attr-defined]
        return list(session.scalars(select(Escalation).order_by(Escalation.id)))


def first_line(kb: KnowledgeBase, key: str, language: str) -> str:
    return kb.message(key, language, when="").split("\n")[0]


def test_the_second_failure_in_a_row_opens_a_case(client: TestClient, kb: KnowledgeBase) -> None:
    chat = Chat(client)
    (first,) = chat.say("qwerty zxcv asdf")
    assert first["text"] == kb.message("suggest_intro", "en")
    assert cases(client) == []
    (second,) = chat.say("zxcvb qwert hjkl")
    assert first_line(kb, "handoff_created", "en") in second["text"], "no second question: the case is open"
    (case,) = cases(client)
    assert (case.reason, case.language, case.status) == ("fallback", "en", "open")


def test_thumbs_down_on_an_answer_opens_a_case(client: TestClient, kb: KnowledgeBase) -> None:
    chat = Chat(client)
    (answer,) = chat.say("I lost my residence card")
    assert answer["text"] == answer_text(kb, "lost_residence_card", "en")
    down = next(b for b in answer["buttons"] if b["title"] == kb.message("button_not_helpful", "en"))
    (reply,) = chat.say(down["payload"])
    assert first_line(kb, "handoff_created", "en") in reply["text"]
    (case,) = cases(client)
    assert (case.reason, case.topic) == ("feedback", kb.entries["lost_residence_card"].topic)
    up = next(b for b in answer["buttons"] if b["title"] == kb.message("button_helpful", "en"))
    assert [r["text"] for r in chat.say(up["payload"])] == [kb.message("feedback_thanks", "en")]


def test_staff_take_over_reply_and_hand_back_then_the_assistant_answers(client: TestClient, kb: KnowledgeBase) -> None:
    chat = Chat(client)
    assert [r["text"] for r in chat.say("I lost my residence card")] == [answer_text(kb, "lost_residence_card", "en")]
    desk: HelpDesk = client.app.state.helpdesk  # type: ignore[attr-defined]
    sessions = client.app.state.assistant.sessions  # type: ignore[attr-defined]
    with sessions() as session:
        staff = create_staff(session, "tanaka", "correct horse battery staple")
        session.commit()
        conversation_id = session.scalar(
            select(Conversation.id).join(Identity, Identity.id == Conversation.identity_id)
            .where(Identity.platform_user_id == chat.sender)
        )
    case_id = desk.take_over(int(conversation_id), staff)

    assert [r["text"] for r in chat.say("Thank you, what about my visa?")] == [kb.message("staff_handling", "en")]
    assert chat.say("hello?") == [], "the assistant stays silent while staff hold the conversation"

    portal: Any = client.portal
    portal.call(desk.reply, case_id, staff, "入管で再交付を申請してください。")
    staff_texts = [r["text"] for r in chat.later()]
    assert staff_texts and staff_texts[-1].endswith("入管で再交付を申請してください。")

    portal.call(desk.hand_back, case_id, staff)
    assert [r["text"] for r in chat.later()] == [kb.message("handed_back", "en")]
    assert [r["text"] for r in chat.say("I lost my residence card")] == [answer_text(kb, "lost_residence_card", "en")]
