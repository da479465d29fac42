"""The training-time e5 vector cache: a vector comes back exactly, only for its model and text."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from bot.engine.vector_cache import VectorCache


def _vectors(count: int, dim: int = 384) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.standard_normal((count, dim)).astype(np.float32)


def test_a_cached_vector_comes_back_bit_for_bit(tmp_path: Path) -> None:
    texts = ["在留カードをなくしました", "地震(じしん)の とき", "how do i renew my visa", "  spaces kept  "]
    vectors = _vectors(len(texts))
    cache = VectorCache(tmp_path / "e5.sqlite3", "model-a", 384)
    cache.put_many(zip(texts, vectors, strict=True))

    again = VectorCache(tmp_path / "e5.sqlite3", "model-a", 384).get_many([*texts, "never embedded"])

    for got, want in zip(again, vectors, strict=False):
        assert got is not None and got.dtype == np.float32
        assert got.tobytes() == want.tobytes()
    assert again[-1] is None


def test_another_model_or_a_different_text_misses(tmp_path: Path) -> None:
    path = tmp_path / "e5.sqlite3"
    VectorCache(path, "model-a", 384).put_many([("hello", _vectors(1)[0])])

    assert VectorCache(path, "model-b", 384).get_many(["hello"]) == [None]
    assert VectorCache(path, "model-a", 384).get_many(["hello ", "Hello"]) == [None, None]
    assert VectorCache(path, "model-a", 768).get_many(["hello"]) == [None]


def test_a_text_cached_twice_keeps_its_first_vector(tmp_path: Path) -> None:
    cache = VectorCache(tmp_path / "e5.sqlite3", "model-a", 384)
    first, second = _vectors(2)
    cache.put_many([("same", first)])
    cache.put_many([("same", second), ("same", second)])

    got = cache.get_many(["same", "same"])
    assert all(v is not None and v.tobytes() == first.tobytes() for v in got)


def test_readers_and_a_writer_at_once(tmp_path: Path) -> None:
    path = tmp_path / "e5.sqlite3"
    texts = [f"question {i}" for i in range(2000)]
    vectors = _vectors(len(texts))
    VectorCache(path, "model-a", 384).put_many(zip(texts[:1000], vectors[:1000], strict=True))
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(5):
                got = VectorCache(path, "model-a", 384).get_many(texts[:1000])
                assert all(v is not None and v.tobytes() == w.tobytes() for v, w in zip(got, vectors, strict=False))
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    def write() -> None:
        try:
            cache = VectorCache(path, "model-a", 384)
            for start in range(1000, 2000, 100):
                cache.put_many(zip(texts[start : start + 100], vectors[start : start + 100], strict=True))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=read) for _ in range(3)] + [threading.Thread(target=write)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    got = VectorCache(path, "model-a", 384).get_many(texts)
    assert all(v is not None and v.tobytes() == w.tobytes() for v, w in zip(got, vectors, strict=True))
