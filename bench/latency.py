"""Latency of the whole product: 200 sequential questions through the REST channel.

Starts Rasa on the trained model and the app (``python -m bot serve``, SQLite in a temporary
folder) as separate processes, as ``make run`` does, then asks held-out questions in every
language, one after another, each as it would come from the web chat. Prints p50/p95/max and the
resident memory (RSS) of each process, as Markdown for bench/RESULTS.md.

    .venv/bin/python bench/latency.py [--questions 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import yaml

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from bot.__main__ import start_engine, stop_process  # noqa: E402
from bot.engine_build import train_if_needed  # noqa: E402
from bot.knowledge import KnowledgeBase  # noqa: E402
from bot.settings import Settings  # noqa: E402
from tests.fakes import free_port  # noqa: E402
from tests.topology import rss_mb  # noqa: E402


def wait_ready(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer")


def questions(count: int) -> list[str]:
    pool: list[str] = []
    for path in sorted((PROJECT / "bench" / "heldout" / "faq").glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for texts in data["questions"].values():
            pool.extend(texts)
    pool.sort(key=lambda text: hash((text, "latency")))
    return [pool[i % len(pool)] for i in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=200)
    args = parser.parse_args()
    kb = KnowledgeBase.load(PROJECT / "knowledge_base")
    train_if_needed(kb, PROJECT)
    folder = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    engine_port, app_port = free_port(), free_port()
    engine_url, app_url = f"http://127.0.0.1:{engine_port}", f"http://127.0.0.1:{app_port}"
    engine = start_engine(Settings(data_dir=folder, rasa_url=engine_url), engine_port, folder / "rasa.log")
    env = dict(os.environ, CONSULT_DATA_DIR=str(folder), CONSULT_RASA_URL=engine_url, CONSULT_PORT=str(app_port),
               CONSULT_LOG_LEVEL="WARNING")
    env.pop("DATABASE_URL", None)
    app = subprocess.Popen([sys.executable, "-m", "bot", "serve"], cwd=PROJECT, env=env, start_new_session=True)
    try:
        wait_ready(f"{engine_url}/webhooks/consult/")
        wait_ready(f"{app_url}/health")
        texts = questions(args.questions)
        timings = []
        with httpx.Client(base_url=app_url, timeout=30) as client:
            for text in texts[:10]:
                client.post("/webhooks/rest/webhook", json={"sender": "warmup", "message": text})
            for text in texts:
                sender = f"bench-{uuid.uuid4().hex[:8]}"
                start = time.perf_counter()
                response = client.post("/webhooks/rest/webhook", json={"sender": sender, "message": text})
                timings.append((time.perf_counter() - start) * 1000)
                assert response.status_code == 200 and response.json(), response.text
        timings.sort()
        p50 = statistics.median(timings)
        p95 = timings[int(0.95 * len(timings)) - 1]
        print(f"| questions | p50 | p95 | max | app RSS | Rasa RSS |\n|---|---|---|---|---|---|\n"
              f"| {len(timings)} sequential | {p50:.0f} ms | {p95:.0f} ms | {timings[-1]:.0f} ms | "
              f"{rss_mb(app.pid):.0f} MB | {rss_mb(engine.pid):.0f} MB |")
    finally:
        stop_process(app)  # type: ignore[arg-type]
        stop_process(engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
