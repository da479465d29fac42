"""How fast the staff console's queue page renders with 10,000 escalations.

Fills a fresh database (SQLite in a temporary folder, or ``--database-url`` for PostgreSQL) with
``--cases`` escalations as the pipeline leaves them: a user and a platform identity each, a
conversation of four messages (the user's question in one of ten languages with its Japanese
translation, the assistant's suggestion, a follow-up, the hand-off), topic, category, night and
urgent flags, a Japanese summary, statuses across the lifecycle. Starts the app as its own process
(``python -m bot serve``), signs in as an admin through the login form, then times ``--requests``
GETs of the first queue page and of a filtered page through real HTTP. Prints p50/p95/max as
Markdown for bench/RESULTS.md. Target: p95 <= 300 ms.

    .venv/bin/python bench/queue_page.py [--cases 10000] [--requests 40] [--database-url URL]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from bot import staff as staff_accounts  # noqa: E402
from bot.db import make_engine, sessions, upgrade  # noqa: E402
from bot.db.models import Conversation, Escalation, Identity, Message, User  # noqa: E402
from tests.fakes import free_port  # noqa: E402

PASSWORD = "bench password 1234"
# (language, question, its Japanese, weight)
QUESTIONS = [
    ("vi", "Tôi có câu hỏi về việc gia hạn thẻ cư trú.", "在留カードの更新について質問があります。", 18),
    ("vi", "Công ty không trả lương cho tôi ba tháng rồi.", "会社が3か月給料を払ってくれません。", 8),
    ("zh", "我的签证下个月到期，需要准备什么材料？", "私のビザは来月切れます。どんな書類が必要ですか。", 14),
    ("en", "My landlord wants me to leave the apartment next week.", "大家さんが来週アパートを出るよう言っています。",
     12),
    ("ne", "मलाई अस्पताल जानु छ तर जापानी भाषा आउँदैन।", "病院に行きたいですが日本語が分かりません。", 10),
    ("pt", "Perdi meu cartão de residência no trem.", "電車で在留カードをなくしました。", 8),
    ("ko", "국민건강보험료를 낼 수 없어요.", "国民健康保険料が払えません。", 6),
    ("tl", "Paano ako makakapag-apply ng permanent residence?", "永住許可はどうやって申請できますか。", 8),
    ("id", "Saya ingin pindah kerja, apa yang harus saya lakukan?", "転職したいのですが、何をすればいいですか。", 8),
    ("es", "¿Dónde puedo consultar sobre un problema con mi jefe?", "上司とのトラブルはどこに相談できますか。", 4),
    ("ja", "子どもの学校の手続きについて教えてください。", "子どもの学校の手続きについて教えてください。", 4),
]
TOPICS = [("visa_renewal", "visa"), ("unpaid_wages", "work"), ("apartment_eviction", "life"),
          ("hospital_foreign_language", "medical"), ("lost_residence_card", "visa"),
          ("national_health_insurance", "medical"), ("permanent_residence", "visa"), ("change_job", "work"),
          ("labour_problems_consultation", "work"), (None, None)]
PLATFORMS = [("line", 60), ("telegram", 15), ("rest", 25)]
STATUSES = [("open", 45), ("assigned", 15), ("waiting", 15), ("resolved", 25)]
REASONS = [("requested", 50), ("fallback", 35), ("feedback", 10), ("safety", 5)]


def pick(rng: random.Random, choices: list[tuple[Any, int]]) -> Any:
    return rng.choices([c[0] for c in choices], weights=[c[1] for c in choices])[0]


def fill(url: str, cases: int, seed: int = 5) -> None:
    """``cases`` escalations with their users, identities, conversations and transcripts."""
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC)
    users, identities, conversations, messages, escalations = [], [], [], [], []
    message_id = 0
    for n in range(1, cases + 1):
        language, question, question_ja, _ = rng.choices(QUESTIONS, weights=[q[3] for q in QUESTIONS])[0]
        platform = pick(rng, PLATFORMS)
        opened = now - dt.timedelta(minutes=rng.randint(5, 60 * 24 * 30))
        night = opened.astimezone(dt.timezone(dt.timedelta(hours=9))).hour not in range(9, 17)
        reason = pick(rng, REASONS)
        status = pick(rng, STATUSES)
        topic, category = rng.choice(TOPICS)
        users.append({"id": n, "language": None, "detected_language": language, "created_at": opened})
        identities.append({"id": n, "user_id": n, "platform": platform, "platform_user_id": f"bench-{platform}-{n}",
                           "created_at": opened})
        conversations.append({"id": n, "user_id": n, "identity_id": n, "handler": "staff" if status in
                              ("assigned", "waiting") else "bot", "created_at": opened, "last_activity": opened})
        first = message_id + 1
        lines = [
            ("in", question, question_ja, None),
            ("out", "…", None, "msg:suggest_intro"),
            ("in", question + " ?", question_ja, None),
            ("out", "…", None, "msg:handoff_created"),
        ]
        transcript = []
        for offset, (direction, text, text_ja, key) in enumerate(lines):
            message_id += 1
            at = opened - dt.timedelta(minutes=3 - offset)
            messages.append({
                "id": message_id, "conversation_id": n, "direction": direction, "platform": platform,
                "platform_event_id": f"bench-{message_id}" if direction == "in" else None, "text": text,
                "language": language, "status": "answered" if direction == "in" else "sent",
                "intent": "nlu_fallback" if direction == "in" else None,
                "confidence": round(rng.uniform(0.2, 0.6), 3) if direction == "in" else None,
                "payload": {"key": key} if key else None, "text_ja": text_ja,
                "translated_by": ("original" if language == "ja" else "argos via en") if text_ja else None,
                "translation_status": "done" if direction == "in" else None, "created_at": at,
            })
            transcript.append({"id": message_id, "direction": direction, "text": text, "language": language,
                               "intent": None, "confidence": None, "key": key, "at": at.isoformat()})
        escalations.append({
            "id": n, "conversation_id": n, "user_id": n, "reason": reason, "urgent": reason == "safety",
            "status": status, "language": language, "platform": platform, "transcript": transcript,
            "topic": topic, "category": category, "night": night, "summary_ja": question_ja[:80],
            "first_message_id": first, "created_at": opened, "updated_at": opened,
            "resolved_at": opened + dt.timedelta(hours=2) if status == "resolved" else None,
        })
    engine = make_engine(url)
    with sessions(engine)() as session:
        for model, rows in ((User, users), (Identity, identities), (Conversation, conversations),
                            (Message, messages), (Escalation, escalations)):
            for start in range(0, len(rows), 2000):
                session.execute(insert(model), rows[start:start + 2000])
        staff_accounts.create_staff(session, "bench", PASSWORD, role="admin")
        session.commit()
    if url.startswith("postgresql"):
        with engine.begin() as connection:
            for table in ("users", "identities", "conversations", "messages", "escalations"):
                connection.exec_driver_sql(f"SELECT setval('{table}_id_seq', (SELECT max(id) FROM {table}))")
                connection.exec_driver_sql(f"ANALYZE {table}")
    else:
        with engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE")
    engine.dispose()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        url = args.database_url or f"sqlite:///{data / 'consult.db'}"
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        upgrade(url)
        started = time.monotonic()
        fill(url, args.cases)
        print(f"filled {args.cases} escalations in {time.monotonic() - started:.1f} s ({url.split(':')[0]})",
              file=sys.stderr)

        port = free_port()
        env = {**os.environ, "CONSULT_DATA_DIR": str(data), "DATABASE_URL": url, "CONSULT_PORT": str(port),
               "CONSULT_RASA_URL": f"http://127.0.0.1:{free_port()}", "CONSULT_LOG_LEVEL": "WARNING"}
        server = subprocess.Popen([sys.executable, "-m", "bot", "serve"], cwd=PROJECT, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=base, timeout=30) as client:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if client.get("/health").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        raise SystemExit("the app did not start")
                    time.sleep(0.2)
                login = client.get("/console/login").text
                token = re.search(r'name="csrf_token" value="([^"]+)"', login)
                assert token
                signed = client.post("/console/login", data={"login": "bench", "password": PASSWORD,
                                                             "csrf_token": token.group(1)})
                assert signed.status_code == 303, signed.status_code
                pages = {
                    "first page (unresolved, urgent and night first)": "/console/queue",
                    "filtered (open, Vietnamese, not urgent, older than 24 h)":
                        "/console/queue?status=open&language=vi&urgent=0&age=24h",
                    "page 20 of all statuses": "/console/queue?status=all&page=20",
                }
                print(f"\nQueue page, {args.cases} escalations, {args.requests} requests each "
                      f"({'PostgreSQL' if url.startswith('postgresql') else 'SQLite'}):\n")
                print("| page | rows | p50 ms | p95 ms | max ms |")
                print("|---|---|---|---|---|")
                for name, path in pages.items():
                    timings = []
                    for attempt in range(args.requests + 3):
                        begin = time.perf_counter()
                        response = client.get(path)
                        elapsed = (time.perf_counter() - begin) * 1000
                        assert response.status_code == 200, (path, response.status_code)
                        if attempt >= 3:  # warm-up: templates compiled, connections pooled
                            timings.append(elapsed)
                    rows = response.text.count('<tr class="')
                    print(f"| {name} | {rows} | {statistics.median(timings):.0f} | {percentile(timings, 0.95):.0f} "
                          f"| {max(timings):.0f} |")
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
