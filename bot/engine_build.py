"""Build and train the Rasa model from ``config.yml``, ``nlu_data/`` and ``knowledge_base/``.

The FAQ training data (``faq/<entry id>`` retrieval intents) and the FAQ responses are
generated here from the knowledge base at train time, into ``build/engine/``. A fingerprint
of every input decides whether ``rasa train`` has to run at all.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from bot.knowledge import KnowledgeBase
from bot.languages import LANGUAGES

MODEL_NAME = "consult"


class _Literal(str):
    pass


def _literal(dumper: yaml.SafeDumper, value: _Literal) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


yaml.SafeDumper.add_representer(_Literal, _literal)


def write_training_data(kb: KnowledgeBase, project: Path, out: Path) -> None:
    """Write the generated NLU data and domain for the FAQ, plus the hand-written domain."""
    data_dir, domain_dir = out / "data", out / "domain"
    for folder in (data_dir, domain_dir):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    nlu = []
    responses = {}
    for entry in sorted(kb.entries.values(), key=lambda e: e.id):
        seen: set[str] = set()
        lines = []
        for lang in LANGUAGES:
            for question in entry.questions.get(lang, ()):
                text = " ".join(question.split())
                if text and text not in seen:
                    seen.add(text)
                    lines.append(f"- {text}")
        nlu.append({"intent": f"faq/{entry.id}", "examples": _Literal("\n".join(lines) + "\n")})
        responses[f"utter_faq/{entry.id}"] = [{"custom": {"answer": entry.id}}]
    with (data_dir / "faq.yml").open("w", encoding="utf-8") as handle:
        yaml.safe_dump({"version": "3.1", "nlu": nlu}, handle, allow_unicode=True, sort_keys=False, width=10_000)
    with (domain_dir / "faq.yml").open("w", encoding="utf-8") as handle:
        yaml.safe_dump({"version": "3.1", "responses": responses}, handle, allow_unicode=True, sort_keys=False)
    shutil.copyfile(project / "nlu_data" / "domain.yml", domain_dir / "core.yml")


def _inputs(project: Path, generated: Path) -> list[Path]:
    """What the model depends on: not the answers (the app renders those), only what trains."""
    files = [project / "config.yml", project / "credentials.yml", project / "constraints" / "engine.txt"]
    for folder, pattern in (("nlu_data", "**/*.yml"), ("bot/engine", "*.py")):
        files.extend(sorted((project / folder).glob(pattern)))
    files.extend(sorted(generated.glob("**/*.yml")))
    return files


def fingerprint(project: Path, generated: Path) -> str:
    digest = hashlib.sha256()
    for path in _inputs(project, generated):
        digest.update(str(path.relative_to(project)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def engine_env(project: Path) -> dict[str, str]:
    """Environment for every Rasa command: our components importable, no telemetry, less noise."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(project) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(
        RASA_TELEMETRY_ENABLED="false",
        TF_CPP_MIN_LOG_LEVEL="2",
        SQLALCHEMY_SILENCE_UBER_WARNING="1",
        OMP_NUM_THREADS="1",
        TF_NUM_INTRAOP_THREADS="2",
        TF_NUM_INTEROP_THREADS="1",
    )
    return env


def rasa_executable(project: Path) -> Path:
    return project / ".venv-rasa" / "bin" / "rasa"


def model_path(project: Path) -> Path:
    return project / "models" / f"{MODEL_NAME}.tar.gz"


def train_if_needed(kb: KnowledgeBase, project: Path, force: bool = False) -> bool:
    """Train when any input changed since the last model; return whether it trained."""
    stamp = project / "models" / f"{MODEL_NAME}.fingerprint"
    out = project / "build" / "engine"
    write_training_data(kb, project, out)
    current = fingerprint(project, out)
    if not force and model_path(project).exists() and stamp.exists() and stamp.read_text() == current:
        return False
    command = [
        str(rasa_executable(project)),
        "train",
        "--config", str(project / "config.yml"),
        "--domain", str(out / "domain"),
        "--data", str(project / "nlu_data" / "core"), str(project / "nlu_data" / "rules.yml"), str(out / "data"),
        "--out", str(project / "models"),
        "--fixed-model-name", MODEL_NAME,
    ]
    print("training the Rasa model (inputs changed) ...", file=sys.stderr, flush=True)
    subprocess.run(command, cwd=project, env=engine_env(project), check=True)
    stamp.write_text(current)
    return True
