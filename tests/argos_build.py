"""Build small, real argostranslate packages for the tests, with no download.

For each pair it trains a SentencePiece model on the phrase list (``tests/data/phrases.yml``), then a
tiny MarianMT model (transformers) until it reproduces every phrase exactly, converts it with
CTranslate2's ``TransformersConverter`` and zips a ``.argosmodel`` file. The models translate the
listed phrases and nothing else: tests must use those phrases.

Results are cached under ``build/argos/<hash of the phrase list and this file>/``; a second run
returns at once. ``python tests/argos_build.py`` builds and prints the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PHRASES = ROOT / "tests" / "data" / "phrases.yml"
BUILD = ROOT / "build" / "argos"
PAIRS = (("ja", "en"), ("en", "ja"), ("vi", "en"), ("en", "vi"))
NAMES = {"ja": "Japanese", "en": "English", "vi": "Vietnamese"}
VERSION = "1.0"
SEED = 1234
LEARNING_RATE = 5e-3
MAX_STEPS = 3000
BEAM_SIZE = 4
LENGTH_PENALTY = 0.2
"""argostranslate's decoding parameters (``apply_packaged_translation``), used to verify the models."""


def load_phrases(path: Path = PHRASES) -> list[dict[str, str]]:
    """The phrase list: a YAML list of ``{ja, en, vi}`` mappings."""
    phrases = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(phrases, list) or not phrases:
        raise ValueError(f"{path}: expected a list of phrases")
    for phrase in phrases:
        if not isinstance(phrase, dict) or not all(isinstance(phrase.get(code), str) for code in NAMES):
            raise ValueError(f"{path}: every phrase needs ja, en and vi: {phrase!r}")
    return phrases


def cache_key(phrases_file: Path = PHRASES) -> str:
    digest = hashlib.sha256()
    digest.update(phrases_file.read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:16]


def package_name(source: str, target: str) -> str:
    return f"translate-{source}_{target}-{VERSION.replace('.', '_')}"


def build_packages(build_root: Path = BUILD, phrases_file: Path = PHRASES, log: bool = True) -> Path:
    """The folder of built ``.argosmodel`` files, building them first if the cache has none."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(name, "1")
    folder = build_root / cache_key(phrases_file)
    done = folder / "complete"
    if done.exists():
        return folder
    build_root.mkdir(parents=True, exist_ok=True)
    with _exclusive(build_root / f"{folder.name}.lock"):
        if done.exists():
            return folder
        import torch

        started = time.monotonic()
        phrases = load_phrases(phrases_file)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with tempfile.TemporaryDirectory(dir=build_root) as tmp:
                work = Path(tmp)
                out = work / "packages"
                out.mkdir()
                for source, target in PAIRS:
                    pair_started = time.monotonic()
                    steps = build_pair(phrases, source, target, work / f"{source}_{target}", out)
                    if log:
                        print(f"argos test package {source}->{target}: {steps} steps, "
                              f"{time.monotonic() - pair_started:.1f} s", file=sys.stderr)
                (out / "complete").write_text(f"{time.monotonic() - started:.1f} s\n")
                if folder.exists():
                    shutil.rmtree(folder)
                out.rename(folder)
        finally:
            torch.set_num_threads(threads)
    return folder


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    with lock_file.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_pair(phrases: list[dict[str, str]], source: str, target: str, work: Path, out: Path) -> int:
    """Train, convert and package one direction; returns the training steps it took."""
    import sentencepiece as spm
    import torch

    work.mkdir(parents=True)
    pairs = [(phrase[source], phrase[target]) for phrase in phrases]
    spm_file = work / "sentencepiece.model"
    _train_sentencepiece([text for pair in pairs for text in pair], spm_file)
    processor = spm.SentencePieceProcessor(model_file=str(spm_file))
    pieces = [processor.id_to_piece(index) for index in range(processor.get_piece_size())]
    eos, pad = processor.eos_id(), len(pieces)

    torch.manual_seed(SEED)
    model = _marian(len(pieces) + 1, pad, eos)
    sources = [processor.encode(text) for text, _ in pairs]
    targets = [[*processor.encode(text), eos] for _, text in pairs]
    expected = [processor.encode(text, out_type=str) for _, text in pairs]
    steps = 0
    while True:
        steps = _train(model, sources, targets, pad, steps)
        hf_dir, ct2_dir = work / f"hf-{steps}", work / f"ct2-{steps}"
        _save_hf(model, pieces, spm_file, hf_dir)
        _convert(hf_dir, ct2_dir)
        wrong = _verify(ct2_dir, [processor.encode(text, out_type=str) for text, _ in pairs], expected)
        if not wrong:
            break
        if steps >= MAX_STEPS:
            raise RuntimeError(f"{source}->{target}: {wrong} phrases still wrong after {steps} steps")
    _package(ct2_dir, spm_file, source, target, out)
    return steps


def _train_sentencepiece(texts: list[str], model_file: Path) -> None:
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buffer, model_type="unigram", vocab_size=256,
        hard_vocab_limit=False, character_coverage=1.0, normalization_rule_name="identity",
        eos_id=0, unk_id=1, bos_id=-1, pad_id=-1, num_threads=1, shuffle_input_sentence=False,
        minloglevel=2,
    )
    model_file.write_bytes(buffer.getvalue())


def _marian(vocab_size: int, pad: int, eos: int) -> Any:
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=vocab_size, decoder_vocab_size=vocab_size, d_model=64,
        encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=512,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad, forced_eos_token_id=eos,
        share_encoder_decoder_embeddings=True, scale_embedding=True,
    )
    model = MarianMTModel(config)
    _zero_pad(model, pad)
    return model


def _zero_pad(model: Any, pad: int) -> None:
    """CTranslate2 starts Marian decoding from a zero embedding: keep the pad row (the start token) at zero."""
    import torch

    with torch.no_grad():
        model.get_input_embeddings().weight[pad].zero_()


def _train(model: Any, sources: list[list[int]], targets: list[list[int]], pad: int, steps: int) -> int:
    """Train until teacher-forced decoding gets every token right with a margin; returns the step count."""
    import torch

    def padded(rows: list[list[int]], fill: int) -> Any:
        width = max(len(row) for row in rows)
        return torch.tensor([row + [fill] * (width - len(row)) for row in rows])

    input_ids = padded(sources, pad)
    attention = (input_ids != pad).long()
    labels = padded(targets, -100)
    decoder_input = padded([[pad, *row[:-1]] for row in targets], pad)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    model.train()
    start = steps
    while steps < MAX_STEPS:
        out = model(input_ids=input_ids, attention_mask=attention, decoder_input_ids=decoder_input, labels=labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        _zero_pad(model, pad)
        steps += 1
        if steps - start >= 50 and steps % 10 == 0:
            mask = labels != -100
            right = bool((out.logits.argmax(-1)[mask] == labels[mask]).all())
            if right and out.loss.item() < 0.01:
                break
    model.eval()
    return steps


def _save_hf(model: Any, pieces: list[str], spm_file: Path, folder: Path) -> None:
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    model.save_pretrained(folder)
    vocab = {piece: index for index, piece in enumerate(pieces)}
    vocab["<pad>"] = len(pieces)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    shutil.copy(spm_file, folder / "source.spm")
    shutil.copy(spm_file, folder / "target.spm")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "MarianTokenizer", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "model_max_length": 512, "separate_vocabs": False,
    }))


def _convert(hf_dir: Path, ct2_dir: Path) -> None:
    from ctranslate2.converters import TransformersConverter

    TransformersConverter(str(hf_dir)).convert(str(ct2_dir), quantization="float32", force=True)


def _verify(ct2_dir: Path, sources: list[list[str]], expected: list[list[str]]) -> int:
    """How many phrases the converted model gets wrong, decoded the way argostranslate decodes."""
    import ctranslate2

    translator = ctranslate2.Translator(str(ct2_dir), device="cpu", inter_threads=1, intra_threads=1)
    results = translator.translate_batch(sources, beam_size=BEAM_SIZE, length_penalty=LENGTH_PENALTY,
                                         replace_unknowns=True, num_hypotheses=1)
    return sum(result.hypotheses[0] != want for result, want in zip(results, expected, strict=True))


def _package(ct2_dir: Path, spm_file: Path, source: str, target: str, out: Path) -> Path:
    """Zip ``model/``, ``sentencepiece.model`` and ``metadata.json`` under one top folder, reproducibly."""
    name = package_name(source, target)
    metadata = {
        "package_version": VERSION, "argos_version": "1.11.0", "type": "translate",
        "from_code": source, "from_name": NAMES[source], "to_code": target, "to_name": NAMES[target],
        "languages": [], "links": [],
    }
    readme = (f"Test package {source}->{target} built by tests/argos_build.py: a tiny model that knows only "
              "the phrases in tests/data/phrases.yml.\n")
    files: dict[str, bytes] = {
        f"{name}/metadata.json": json.dumps(metadata, indent=2).encode(),
        f"{name}/README.md": readme.encode(),
        f"{name}/sentencepiece.model": spm_file.read_bytes(),
    }
    for path in sorted(ct2_dir.rglob("*")):
        if path.is_file():
            files[f"{name}/model/{path.relative_to(ct2_dir).as_posix()}"] = path.read_bytes()
    archive = out / f"{name}.argosmodel"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for folder in (f"{name}/", f"{name}/model/"):
            zipped.writestr(zipfile.ZipInfo(folder, date_time=(2026, 1, 1, 0, 0, 0)), b"")
        for arcname in sorted(files):
            info = zipfile.ZipInfo(arcname, date_time=(2026, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zipped.writestr(info, files[arcname])
    return archive


def main() -> int:
    started = time.monotonic()
    folder = build_packages()
    print(f"{folder} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
