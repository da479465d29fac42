"""Which entries the classifier confuses, found on the training questions alone (k-fold cross-validation).

Steers the writing of new training questions without looking at ``bench/heldout/``: each fold's
JointClassifier (the product's fitting functions, config.yml's settings, the e5 vectors from
``build/e5-cache/``) is trained on the other folds and predicts the fold. Prints the error rate per
language and the most confused pairs of entries (expected -> predicted, both directions summed),
and with ``--json`` writes every miss. Runs in the engine's venv after ``python -m bot train``:

    .venv-rasa/bin/python bench/confusions_cv.py [--folds 3] [--pairs 40] [--json misses.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from bench.classifier_offline import component_config, training_examples, vectors  # noqa: E402
from bot.engine.components import _every_core, fit_joint, joint_labels, joint_probabilities  # noqa: E402
from bot.knowledge import KnowledgeBase  # noqa: E402


def languages_of(kb: KnowledgeBase) -> dict[str, str]:
    """Each training question's language (the first entry and language that has it)."""
    found: dict[str, str] = {}
    for entry in kb.entries.values():
        for language, questions in entry.questions.items():
            for question in questions:
                found.setdefault(question, language)
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    config = component_config()
    texts, labels = training_examples()
    language = languages_of(KnowledgeBase.load(PROJECT / "knowledge_base"))
    train_vectors = vectors(texts, str(PROJECT / "build" / "e5-cache" / "vectors.sqlite3"))
    rng = np.random.default_rng(7)
    fold = np.empty(len(texts), dtype=int)
    by_label: dict[str, list[int]] = collections.defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(i)
    for indices in by_label.values():  # stratified: every label in every fold
        order = rng.permutation(indices)
        fold[order] = np.arange(len(order)) % args.folds
    misses: list[dict[str, str]] = []
    asked: collections.Counter[str] = collections.Counter()
    for k in range(args.folds):
        train = np.flatnonzero(fold != k)
        test = np.flatnonzero(fold == k)
        train_texts = [texts[i] for i in train]
        train_labels = [labels[i] for i in train]
        with _every_core():
            model = fit_joint(train_texts, train_vectors[train], train_labels, config)
            names = joint_labels(model)
            probabilities = joint_probabilities(model, [texts[i] for i in test], train_vectors[test], config)
        for i, row in zip(test, probabilities, strict=True):
            lang = language.get(texts[i], "core")
            asked[lang] += 1
            guess = names[int(row.argmax())]
            if guess != labels[i]:
                misses.append({"language": lang, "expected": labels[i], "predicted": guess, "text": texts[i]})
        print(f"fold {k + 1}/{args.folds}: {len(misses)} misses so far", flush=True)
    wrong = collections.Counter(m["language"] for m in misses)
    total = sum(asked.values())
    print(f"cross-validated accuracy {100 * (1 - len(misses) / total):.1f}% ({total - len(misses)}/{total})")
    print("  ".join(f"{lang} {100 * (1 - wrong[lang] / n):.1f}" for lang, n in sorted(asked.items())))
    pairs: collections.Counter[tuple[str, str]] = collections.Counter()
    for miss in misses:
        pairs[tuple(sorted((miss["expected"], miss["predicted"])))] += 1  # type: ignore[index]
    for (a, b), count in pairs.most_common(args.pairs):
        print(f"  {a} <-> {b}: {count}")
    if args.json:
        args.json.write_text(json.dumps(misses, ensure_ascii=False, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
