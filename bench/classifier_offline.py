"""The JointClassifier on held-out questions in one process, for trying classifier settings.

Trains the models of ``JointClassifier`` (``fit_lexical``, ``fit_dense``, ``fit_neighbours`` in
bot/engine/components.py) on the training data ``bot train`` gives Rasa, with the e5 vectors from
the training cache (``build/e5-cache/``; held-out vectors in a file of their own), and predicts
every held-out question. No Rasa server, no app, no safety net: the raw top label only, so the
figure is close to, not the same as, ``bench/accuracy.py``'s (which is the one to report). Each
``--try`` is one more run over the same data (the fitted models are reused where the settings
they depend on are the same); ``--extra`` also trains on the entries' titles, the first line of
their answers or every line of them (not in the product). Runs in the engine's venv:

    .venv-rasa/bin/python bench/classifier_offline.py [--set knn_weight=0.3] [--try dense_C=20 --try temperature=4]
        [--extra title,lead] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from bot.engine.components import (  # noqa: E402
    MAX_CHARS,
    JointClassifier,
    _cache,
    _engine,
    fit_dense,
    fit_lexical,
    fit_neighbours,
    joint_labels,
    joint_probabilities,
)

DUMP = """
import json, sys
from pathlib import Path
from bench.accuracy import load_heldout
from bot.engine_build import write_training_data
from bot.knowledge import KnowledgeBase
kb = KnowledgeBase.load(Path('knowledge_base'))
write_training_data(kb, Path('.'), Path('build/engine'))
from bot.languages import LANGUAGES
extra = []
for entry in kb.entries.values():
    for language in LANGUAGES:
        extra.append(('title', f'faq/{entry.id}', kb.title(entry.id, language)))
        lines = [line for line in kb.answer(entry.id, language).splitlines() if line.strip()]
        extra.append(('lead', f'faq/{entry.id}', lines[0]))
        for line in lines:
            extra.append(('answer', f'faq/{entry.id}', line))
json.dump({'heldout': load_heldout(kb), 'extra': extra}, sys.stdout, ensure_ascii=False)
"""


def training_examples() -> tuple[list[str], list[str]]:
    from rasa.shared.nlu.constants import INTENT_RESPONSE_KEY
    from rasa.shared.nlu.training_data.loading import load_data

    texts, labels = [], []
    folders = [PROJECT / "build" / "engine" / "data", PROJECT / "nlu_data" / "core"]
    for folder in folders:
        for path in sorted(folder.glob("*.yml")):
            for example in load_data(str(path)).intent_examples:
                key, intent = example.get(INTENT_RESPONSE_KEY), example.get("intent")
                label = key if isinstance(key, str) and key.startswith("faq/") else intent
                if label and example.get("text"):
                    texts.append(str(example.get("text")))
                    labels.append(str(label))
    return texts, labels


def vectors(texts: list[str], cache_path: str) -> np.ndarray:
    engine = _engine(1)
    cache = _cache(cache_path, engine.dim)
    assert cache is not None
    cut = [text[:MAX_CHARS] for text in texts]
    known = cache.get_many(cut)
    missing = [i for i, vector in enumerate(known) if vector is None]
    for start in range(0, len(missing), 64):
        batch = missing[start : start + 64]
        for i, vector in zip(batch, np.atleast_2d(engine.query([cut[i] for i in batch])), strict=False):
            known[i] = np.asarray(vector, dtype=np.float32)
        cache.put_many((cut[i], known[i]) for i in batch)
    return np.vstack(known)


def component_config() -> dict:
    config = yaml.safe_load((PROJECT / "config.yml").read_text(encoding="utf-8"))
    for component in config["pipeline"]:
        if component["name"].endswith("JointClassifier"):
            return {**JointClassifier.get_default_config(), **component}
    raise SystemExit("no JointClassifier in config.yml")


LEXICAL_KEYS = ("ngram_max", "word_ngram_max", "lexical_C")
_FITTED: dict[str, object] = {}


def evaluate(texts: list[str], train_vectors: np.ndarray, labels: list[str], heldout: list, test_vectors: np.ndarray,
             config: dict) -> list[dict]:
    questions = [q for _, _, _, q in heldout]
    lexical_key = repr([config.get(k) for k in LEXICAL_KEYS])
    dense_key = repr(config.get("dense_C"))
    if lexical_key not in _FITTED:
        _FITTED[lexical_key] = fit_lexical(texts, labels, config)
    if dense_key not in _FITTED:
        _FITTED[dense_key] = fit_dense(train_vectors, labels, config)
    if "neighbours" not in _FITTED:
        _FITTED["neighbours"] = fit_neighbours(train_vectors, labels)
    model = (*_FITTED[lexical_key], _FITTED[dense_key], _FITTED["neighbours"])
    print(f"n-gram features: {model[1].coef_.shape[1]}")
    names = joint_labels(model)
    probabilities = joint_probabilities(model, questions, test_vectors, config)
    predicted = [names[i] for i in probabilities.argmax(axis=1)]
    by_language: dict[str, list[bool]] = collections.defaultdict(list)
    confusions: collections.Counter[tuple[str, str]] = collections.Counter()
    rows = []
    for (language, topic, expected, text), guess, row in zip(heldout, predicted, probabilities, strict=True):
        by_language[language].append(guess == expected)
        if guess != expected:
            confusions[(expected, guess)] += 1
        rows.append({"language": language, "topic": topic, "expected": expected, "predicted": guess,
                     "confidence": float(row.max()), "text": text})
    right = sum(sum(v) for v in by_language.values())
    print(f"config: { {k: config[k] for k in sorted(config) if k != 'name'} }", flush=True)
    print(f"overall {100 * right / len(heldout):.1f}% ({right}/{len(heldout)})")
    print("  ".join(f"{lang} {100 * sum(v) / len(v):.1f}" for lang, v in by_language.items()))
    for (expected, guess), count in confusions.most_common(int(config.get("show", 15))):
        print(f"  {expected} -> {guess}: {count}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", action="append", default=[], help="key=value over config.yml's JointClassifier")
    parser.add_argument("--try", dest="tries", action="append", default=[],
                        help="k=v,k=v: one more run with these over --set (repeatable)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--extra", default="", help="also train on: title, answer (comma-separated)")
    args = parser.parse_args()
    base = component_config()
    for item in args.set:
        key, value = item.split("=", 1)
        base[key] = yaml.safe_load(value)
    dump = json.loads(
        subprocess.run([str(PROJECT / ".venv" / "bin" / "python"), "-c", DUMP], cwd=PROJECT, check=True,
                       capture_output=True, text=True).stdout
    )
    heldout = dump["heldout"]
    texts, labels = training_examples()
    kinds = set(filter(None, args.extra.split(",")))
    for kind, label, text in dump["extra"]:
        text = " ".join(text.split())
        if kind in kinds and len(text) >= 4:
            texts.append(text)
            labels.append(label)
    train_vectors = vectors(texts, "build/e5-cache/vectors.sqlite3")
    test_vectors = vectors([q for _, _, _, q in heldout], "build/e5-cache/heldout.sqlite3")
    rows: list[dict] = []
    for overrides in args.tries or [""]:
        config = dict(base)
        for item in filter(None, overrides.split(",")):
            key, value = item.split("=", 1)
            config[key] = yaml.safe_load(value)
        rows = evaluate(texts, train_vectors, labels, heldout, test_vectors, config)
    if args.json:
        args.json.write_text(json.dumps(rows, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
