"""A disk cache of sentence vectors, keyed by the model that made them and the exact text.

Training embeds ~16,000 questions with e5, which is most of the training time; between two
trainings only a few questions change. The cache is one SQLite file (WAL journal, so readers
never block each other or a writer); a key is the SHA-256 of the model id and the text, so the
questions themselves are not stored. A vector comes back bit for bit as it went in.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

_SCHEMA = "CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vector BLOB NOT NULL)"
_CHUNK = 500
"""Keys per SELECT (SQLite limits the number of bound parameters)."""


class VectorCache:
    """Vectors of one model (``model_id``) in the SQLite file ``path``."""

    def __init__(self, path: Path, model_id: str, dim: int) -> None:
        self._path = Path(path)
        self._model_id = model_id
        self._dim = dim
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = self._connect()
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
        finally:
            db.close()

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self._path, timeout=60)

    def _key(self, text: str) -> bytes:
        return hashlib.sha256(f"{self._model_id}\0{text}".encode()).digest()

    def get_many(self, texts: Sequence[str]) -> List[Optional[np.ndarray]]:
        """The cached vector of each text, or None where there is none."""
        keys = [self._key(text) for text in texts]
        found: Dict[bytes, bytes] = {}
        db = self._connect()
        try:
            unique = list(dict.fromkeys(keys))
            for start in range(0, len(unique), _CHUNK):
                chunk = unique[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                found.update(db.execute(f"SELECT key, vector FROM vectors WHERE key IN ({marks})", chunk))
        finally:
            db.close()
        vectors: List[Optional[np.ndarray]] = []
        for key in keys:
            blob = found.get(key)
            vector = None if blob is None else np.frombuffer(blob, dtype=np.float32).copy()
            vectors.append(vector if vector is not None and vector.shape == (self._dim,) else None)
        return vectors

    def put_many(self, items: Iterable[Tuple[str, np.ndarray]]) -> None:
        """Store each (text, vector); a text already cached keeps its vector."""
        rows = [
            (self._key(text), np.ascontiguousarray(vector, dtype=np.float32).reshape(-1).tobytes())
            for text, vector in items
        ]
        if not rows:
            return
        db = self._connect()
        try:
            with db:
                db.executemany("INSERT OR IGNORE INTO vectors (key, vector) VALUES (?, ?)", rows)
        finally:
            db.close()
