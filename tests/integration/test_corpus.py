"""Prompt sources on real files: the embedded Wikipedia, text, JSONL and a saved dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ppmech.corpus import document_split, load_documents, select_prompts, special_prefix
from ppmech.errors import PPMechError
from ppmech.models.identity import LoadedModel


def test_embedded_wikipedia_in_three_languages() -> None:
    for name in ("wiki-en", "wiki-es", "wiki-fr"):
        docs = load_documents(name)
        assert len(docs) > 1000
        assert all(d.text.strip() for d in docs[:50])
    assert any(d.source == "Euclid" for d in load_documents("wiki-en"))


def test_selection_is_seeded_and_keeps_long_documents(smollm2: LoadedModel) -> None:
    docs = load_documents("wiki-en")
    a = select_prompts(docs, smollm2.tokenizer, n=12, context_tokens=50, continuation_tokens=30, seed=4)
    b = select_prompts(docs, smollm2.tokenizer, n=12, context_tokens=50, continuation_tokens=30, seed=4)
    c = select_prompts(docs, smollm2.tokenizer, n=12, context_tokens=50, continuation_tokens=30, seed=5)
    assert [p.source for p in a] == [p.source for p in b]
    assert [p.source for p in a] != [p.source for p in c]
    assert [p.index for p in a] == list(range(12))
    for p in a:
        assert len(p.ids) == 50 and len(p.continuation_ids) == 30
        full = smollm2.tokenizer(
            next(d.text for d in docs if d.source == p.source), add_special_tokens=False
        )["input_ids"]
        assert full[:80] == p.ids + p.continuation_ids


def test_short_documents_are_skipped_and_too_few_is_an_error(smollm2: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "docs.txt"
    long_text = " ".join(["word"] * 80)
    path.write_text(f"too short\n\n{long_text}\n\n{long_text} again\n", encoding="utf-8")
    docs = load_documents(str(path))
    assert len(docs) == 3
    prompts = select_prompts(docs, smollm2.tokenizer, n=2, context_tokens=50)
    assert {p.source for p in prompts} == {"docs.txt#1", "docs.txt#2"}
    with pytest.raises(PPMechError, match="only 2 of 3 documents"):
        select_prompts(docs, smollm2.tokenizer, n=3, context_tokens=50)


def test_jsonl_with_text_field(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text(
        json.dumps({"title": "A", "body": "alpha text"}) + "\n\n" + json.dumps({"body": "beta"}) + "\n",
        encoding="utf-8",
    )
    docs = load_documents(str(path), text_field="body")
    assert [d.text for d in docs] == ["alpha text", "beta"]
    assert docs[0].source == "A"
    with pytest.raises(PPMechError, match="no field 'text'"):
        load_documents(str(path))


def test_saved_hugging_face_dataset(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["first document", "", "second document"]})
    ds.save_to_disk(str(tmp_path / "ds"))
    docs = load_documents(str(tmp_path / "ds"))
    assert [d.text for d in docs] == ["first document", "second document"]
    with pytest.raises(PPMechError, match="no column 'body'"):
        load_documents(str(tmp_path / "ds"), text_field="body")


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\n\n  \n", "is empty"), (b"caf\xe9 latin-1", "not valid UTF-8")],
)
def test_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(PPMechError, match=message):
        load_documents(str(path))


def test_missing_corpus_names_the_choices() -> None:
    with pytest.raises(PPMechError, match="wiki-en"):
        load_documents("/nonexistent/corpus.txt")


def test_zero_prompts_is_an_error(smollm2: LoadedModel) -> None:
    with pytest.raises(PPMechError, match="at least 1"):
        select_prompts(load_documents("wiki-en"), smollm2.tokenizer, n=0)


def test_heldout_split_is_disjoint_and_about_a_fifth() -> None:
    docs = load_documents("wiki-en")
    held = [d for d in docs if document_split(d.source, d.text) == "heldout"]
    assert 0.15 < len(held) / len(docs) < 0.25


def test_special_prefix(smollm2: LoadedModel) -> None:
    assert special_prefix(smollm2.tokenizer) == []  # SmolLM2 adds no BOS by default


@pytest.mark.parametrize(
    ("record", "shown"),
    [({"text": None}, "null"), ({"text": 3}, "a int"), ({"text": ["a"]}, "a list")],
)
def test_jsonl_texts_that_are_not_strings_are_refused_with_their_line(
    tmp_path: Path, record: dict[str, object], shown: str
) -> None:
    """Issue 9: ``{"text": null}`` was measured as the text "None"."""
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(PPMechError, match=rf"docs.jsonl:2: field 'text' is {shown}, not a string"):
        load_documents(str(path))


def test_dataset_rows_without_a_string_text_are_refused(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict({"text": ["first", None, "third"]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(PPMechError, match="row 1: column 'text' is null, not a string"):
        load_documents(str(tmp_path / "ds"))


def test_an_empty_split_says_so_instead_of_0_of_0(smollm2: LoadedModel) -> None:
    """Issue 9: the message read "only 0 of 0 documents"."""
    docs = load_documents("wiki-en")
    prompts_only = [d for d in docs[:200] if document_split(d.source, d.text) == "prompts"]
    with pytest.raises(PPMechError) as exc:
        select_prompts(prompts_only, smollm2.tokenizer, n=2, split="heldout")
    assert "0 of 0" not in exc.value.problem
    assert (
        f"none of the corpus's {len(prompts_only)} documents falls in its 'heldout' part" in exc.value.problem
    )


def test_the_length_rule_names_the_fields_that_set_it(smollm2: LoadedModel, tmp_path: Path) -> None:
    """Issue 9: teacher decoding's need for `new_tokens` more tokens was never mentioned."""
    path = tmp_path / "docs.txt"
    path.write_text(" ".join(["word"] * 60), encoding="utf-8")
    with pytest.raises(PPMechError) as exc:
        select_prompts(
            load_documents(str(path)),
            smollm2.tokenizer,
            n=1,
            context_tokens=50,
            continuation_tokens=100,
            continuation_field="new_tokens",
            purpose="teacher decoding scores the article's own next `new_tokens` tokens",
        )
    assert "150 tokens a prompt needs (`context_tokens` 50 + `new_tokens` 100; teacher decoding" in str(
        exc.value
    )
    assert "fewer `prompts`, `context_tokens` or `new_tokens`" in exc.value.fix
    # On the command line each field reads as its flag.
    flags = {"prompts": "--prompts", "context_tokens": "--context-tokens", "new_tokens": "--new-tokens"}
    assert "(--context-tokens 50 + --new-tokens 100;" in exc.value.for_cli(flags)
