"""Accuracy of the engine on held-out questions (bench/heldout/), and the fallback thresholds.

Starts the engine (``rasa run`` on the trained model) and the product (``python -m bot serve``,
SQLite in a temporary folder), then sends every held-out question, each from a new user, to the
product's REST channel (``POST /webhooks/rest/webhook``), as the web chat does. What the classifier
chose is read back from the stored inbound message (its ``payload.parse``: the intent ranking and
the FAQ ranking the engine returned); a question the safety net answers before the engine is
recorded as ``safety:<kind>`` (right for an urgent entry). The raw prediction (top intent without
the fallback, and for FAQ questions the top knowledge-base entry) and its confidences are
recorded. A held-out file may name, per question, other entries whose answers answer it as
well (``also``: reviewed, see bench/RESULTS.md); predicting one of them counts as right, and the
report gives the figure by the single label beside it. Then every pair of thresholds
(intent, answer) is tried, and the pair with the lowest cost is reported, where an accepted wrong
answer costs 1 and a rejected right one costs 0.5 (the user still gets the best answers as
buttons). Prints Markdown for bench/RESULTS.md; ``--json`` also writes the raw predictions.

    .venv/bin/python bench/accuracy.py [--json out.json]
    .venv/bin/python bench/accuracy.py --rescore out.json   # report saved predictions again
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import yaml

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from bench.latency import free_port, wait_ready  # noqa: E402
from bot.knowledge import KnowledgeBase  # noqa: E402
from bot.languages import LANGUAGES  # noqa: E402
from bot.safety import SafetyNet  # noqa: E402

THRESHOLDS = [round(0.05 * i, 2) for i in range(0, 20)]


@dataclass
class Result:
    language: str
    topic: str
    expected: str
    predicted: str
    intent_confidence: float
    answer_confidence: float
    top3: list[str]
    text: str
    also: list[str] = field(default_factory=list)

    @property
    def right(self) -> bool:
        """The expected entry, or one the review found answers the question as well."""
        return self.predicted == self.expected or self.predicted in self.also

    @property
    def strict(self) -> bool:
        """The expected entry (the single label)."""
        return self.predicted == self.expected


def load_heldout(kb: KnowledgeBase) -> list[tuple[str, str, str, str]]:
    """(language, topic, expected label, question) for every held-out question."""
    items = []
    for path in sorted((PROJECT / "bench" / "heldout" / "faq").glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        entry = kb.entries.get(data["id"])
        if entry is None:
            raise SystemExit(f"{path}: no knowledge-base entry {data['id']}")
        for language, questions in data["questions"].items():
            items += [(language, entry.topic, f"faq/{entry.id}", q) for q in questions]
    core = yaml.safe_load((PROJECT / "bench" / "heldout" / "core.yml").read_text(encoding="utf-8"))
    for intent, by_language in core.items():
        for language, questions in by_language.items():
            items += [(language, "conversation", intent, q) for q in questions]
    return items


def load_alternatives() -> dict[tuple[str, str], list[str]]:
    """(expected label, question) -> the other labels reviewed as answering that question as well."""
    alternatives = {}
    for path in sorted((PROJECT / "bench" / "heldout" / "faq").glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for question, ids in (data.get("also") or {}).items():
            alternatives[(f"faq/{data['id']}", question)] = [f"faq/{i}" for i in ids]
    return alternatives


def stored_outcome(db: sqlite3.Connection, sender: str) -> tuple[dict, list[str]]:
    """The parse stored with the sender's inbound message, and the keys of the replies."""
    rows = db.execute(
        "SELECT m.direction, m.payload FROM messages m JOIN conversations c ON m.conversation_id = c.id "
        "JOIN identities i ON c.identity_id = i.id WHERE i.platform = 'rest' AND i.platform_user_id = ? "
        "ORDER BY m.id",
        (sender,),
    ).fetchall()
    parse: dict = {}
    keys: list[str] = []
    for direction, payload in rows:
        data = json.loads(payload) if payload else {}
        if direction == "in":
            parse = data.get("parse") or {}
        elif data.get("key"):
            keys.append(str(data["key"]))
    return parse, keys


def ask_all(url: str, db_path: Path, items: list[tuple[str, str, str, str]], urgent: set[str]) -> list[Result]:
    results = []
    alternatives = load_alternatives()
    db = sqlite3.connect(db_path)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            for language, topic, expected, text in items:
                sender = f"bench-{uuid.uuid4().hex}"
                response = client.post("/webhooks/rest/webhook", json={"sender": sender, "message": text})
                response.raise_for_status()
                parse, keys = stored_outcome(db, sender)
                ranking = [i for i in parse.get("intent_ranking") or [] if i["name"] != "nlu_fallback"]
                faq = parse.get("faq_ranking") or []
                if ranking:
                    intent, intent_confidence = ranking[0]["name"], ranking[0]["confidence"]
                    predicted, answer_confidence = intent, 1.0
                    if intent == "faq" and faq:
                        predicted, answer_confidence = faq[0]["key"], faq[0]["confidence"]
                else:  # answered before the engine: the safety net, a language switch, ...
                    key = keys[0] if keys else "none"
                    predicted = key.replace("msg:emergency_", "safety:")
                    predicted = predicted.replace("msg:language_changed", "change_language")
                    if predicted.startswith("safety:") and expected in urgent:
                        predicted = expected
                    intent_confidence = answer_confidence = 1.0
                results.append(
                    Result(language, topic, expected, predicted, intent_confidence, answer_confidence,
                           [f["key"] for f in faq[:3]], text, alternatives.get((expected, text), []))
                )
    finally:
        db.close()
    return results


def accepted(result: Result, threshold: float, faq_threshold: float) -> bool:
    if result.intent_confidence < threshold:
        return False
    return not (result.predicted.startswith("faq/") and result.answer_confidence < faq_threshold)


def cost(results: list[Result], threshold: float, faq_threshold: float) -> tuple[float, int, int, int]:
    right_accepted = wrong_accepted = right_rejected = 0
    for result in results:
        ok = result.right
        if accepted(result, threshold, faq_threshold):
            right_accepted += ok
            wrong_accepted += not ok
        else:
            right_rejected += ok
    return wrong_accepted + 0.5 * right_rejected, right_accepted, wrong_accepted, right_rejected


def pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def report(results: list[Result], kb: KnowledgeBase, configured: tuple[float, float]) -> str:
    lines = []
    total = len(results)
    correct = sum(r.right for r in results)
    faq = [r for r in results if r.expected.startswith("faq/")]
    reviewed = sum(bool(r.also) for r in results)
    lines.append(f"Held-out questions: {total} ({len(faq)} knowledge-base questions for {len(kb.entries)} entries,"
                 f" {total - len(faq)} conversational), {len(LANGUAGES)} languages; {reviewed} with a reviewed"
                 " second right entry.\n")
    lines.append(f"**Right entry or intent, before any fallback: {pct(correct, total)}** "
                 f"(knowledge-base questions only: {pct(sum(r.right for r in faq), len(faq))}); "
                 f"by the single label: {pct(sum(r.strict for r in results), total)}.\n")

    lines.append("### Per language\n")
    lines.append("| language | questions | right | accuracy | by the single label | answered right at the configured "
                 "thresholds | answered wrong | fell back (right entry in the 3 suggestions) |")
    lines.append("|---|---|---|---|---|---|---|---|")
    threshold, faq_threshold = configured
    by_language = collections.defaultdict(list)
    for result in results:
        by_language[result.language].append(result)
    for language in LANGUAGES:
        group = by_language.get(language, [])
        right = sum(r.right for r in group)
        taken = [r for r in group if accepted(r, threshold, faq_threshold)]
        fell = [r for r in group if not accepted(r, threshold, faq_threshold)]
        rescued = sum(r.expected in r.top3 for r in fell)
        lines.append(
            f"| {language} | {len(group)} | {right} | {pct(right, len(group))} | "
            f"{pct(sum(r.strict for r in group), len(group))} | "
            f"{pct(sum(r.right for r in taken), len(group))} | "
            f"{pct(sum(not r.right for r in taken), len(group))} | "
            f"{pct(len(fell), len(group))} ({rescued}/{len(fell)}) |"
        )

    lines.append("\n### Per topic\n")
    lines.append("| topic | questions | accuracy |")
    lines.append("|---|---|---|")
    by_topic = collections.defaultdict(list)
    for result in results:
        by_topic[result.topic].append(result)
    for topic, group in sorted(by_topic.items()):
        right = sum(r.right for r in group)
        lines.append(f"| {topic} | {len(group)} | {pct(right, len(group))} |")

    lines.append("\n### Fallback thresholds (cost = wrong answers given + 0.5 x right answers withheld)\n")
    lines.append("| intent threshold | answer threshold | cost | answered right | answered wrong | withheld right |")
    lines.append("|---|---|---|---|---|---|")
    table = sorted(
        ((cost(results, t, f), t, f) for t in THRESHOLDS for f in THRESHOLDS), key=lambda row: (row[0][0], -row[1])
    )
    for (value, right, wrong, withheld), t, f in table[:8]:
        lines.append(f"| {t:.2f} | {f:.2f} | {value:.1f} | {right} | {wrong} | {withheld} |")
    configured_cost = cost(results, threshold, faq_threshold)
    lines.append(f"| **{threshold:.2f} (configured)** | **{faq_threshold:.2f}** | {configured_cost[0]:.1f} | "
                 f"{configured_cost[1]} | {configured_cost[2]} | {configured_cost[3]} |")
    confident_wrong = sum(not r.right and r.answer_confidence * r.intent_confidence >= 0.9
                          for r in results)
    lines.append(f"\nWrong predictions with confidence >= 0.9: {confident_wrong} of {total}.")

    lines.append("\n### Most frequent confusions (expected -> predicted)\n")
    pairs = collections.Counter((r.expected, r.predicted) for r in results if not r.right)
    for (expected, predicted), count in pairs.most_common(12):
        lines.append(f"- {expected} -> {predicted}: {count}")

    safety = SafetyNet.load()
    data = yaml.safe_load((PROJECT / "tests" / "data" / "emergencies.yml").read_text(encoding="utf-8"))
    positives = data["positive"]
    caught = sum(1 for p in positives if (hit := safety.check(p["text"])) is not None and hit.kind == p["kind"])
    false_alarms = sum(1 for n in data["negative"] if safety.check(n["text"]) is not None)
    lines.append(f"\nSafety net (before Rasa): emergency recall {caught}/{len(positives)} "
                 f"({pct(caught, len(positives))}); false alarms {false_alarms}/{len(data['negative'])}.")
    return "\n".join(lines)


def configured_thresholds() -> tuple[float, float]:
    config = yaml.safe_load((PROJECT / "config.yml").read_text(encoding="utf-8"))
    for component in config["pipeline"]:
        if component["name"].endswith("FallbackClassifier"):
            return float(component["threshold"]), float(component.get("faq_threshold", 0.0))
    return 0.0, 0.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, help="write every prediction here")
    parser.add_argument("--rescore", type=Path, help="report the predictions saved by --json again, without asking")
    args = parser.parse_args()
    if args.rescore:
        alternatives = load_alternatives()
        saved = [Result(**{k: v for k, v in row.items() if k != "also"})
                 for row in json.loads(args.rescore.read_text(encoding="utf-8"))]
        for result in saved:
            result.also = alternatives.get((result.expected, result.text), [])
        print(report(saved, KnowledgeBase.load(PROJECT / "knowledge_base"), configured_thresholds()))
        return 0
    from bot.__main__ import start_engine, stop_process
    from bot.engine_build import train_if_needed
    from bot.settings import Settings

    kb = KnowledgeBase.load(PROJECT / "knowledge_base")
    items = load_heldout(kb)
    urgent = {f"faq/{entry.id}" for entry in kb.entries.values() if entry.urgent}
    train_if_needed(kb, PROJECT)
    folder = Path(tempfile.mkdtemp(prefix="bench-accuracy-"))
    engine_port, app_port = free_port(), free_port()
    engine_url, app_url = f"http://127.0.0.1:{engine_port}", f"http://127.0.0.1:{app_port}"
    settings = Settings(data_dir=folder, rasa_url=engine_url)
    engine = start_engine(settings, engine_port, folder / "rasa.log")
    env = dict(os.environ, CONSULT_DATA_DIR=str(folder), CONSULT_RASA_URL=engine_url, CONSULT_PORT=str(app_port),
               CONSULT_LOG_LEVEL="WARNING")
    env.pop("DATABASE_URL", None)
    app = subprocess.Popen([sys.executable, "-m", "bot", "serve"], cwd=PROJECT, env=env, start_new_session=True)
    try:
        wait_ready(f"{engine_url}/webhooks/consult/", 240)
        wait_ready(f"{app_url}/health", 240)
        results = ask_all(app_url, folder / "consult.db", items, urgent)
    finally:
        stop_process(app)  # type: ignore[arg-type]
        stop_process(engine)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], ensure_ascii=False, indent=1))
    print(report(results, kb, configured_thresholds()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
