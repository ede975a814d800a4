"""The incremental detokenizers (the tokenizers DecodeStream one and the Python window), on a
byte-level BPE and a SentencePiece-style (Metaspace + byte fallback) tokenizer built here."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers

from ingot.runtime.detokenizer import StreamDetokenizer, WindowDetokenizer, incremental_detokenizer
from ingot.tokenizer import Tokenizer

CORPUS = ["Hello world! The quick brown fox jumps over the lazy dog.", "héllo café naïve 中文",
          "def f(x):\n    return x * 2\n"] * 20
SPECIALS = ["<s>", "</s>", "<|im_end|>"]
HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def byte_level() -> Tokenizer:
    tok = Backend(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return Tokenizer(tok, {})


def sentencepiece_like() -> Tokenizer:
    """Llama-2-style: '▁' marks spaces, unknown characters fall back to <0xNN> byte tokens, and the
    decoder strips the leading space of the first token."""
    tok = Backend(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS))
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    tok = Backend.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return Tokenizer(tok, {})


TOKENIZERS = {"byte_level": byte_level(), "sentencepiece": sentencepiece_like()}


@pytest.fixture(params=list(TOKENIZERS))
def tok(request):
    return TOKENIZERS[request.param]


@pytest.fixture(params=["stream", "window"], autouse=True)
def detokenizer(request, monkeypatch):
    """Every test runs on both: what incremental_detokenizer picks for these tokenizers (the
    DecodeStream one) and the Python window it falls back to."""
    monkeypatch.setitem(MAKERS, "make", incremental_detokenizer if request.param == "stream" else WindowDetokenizer)
    return request.param


MAKERS = {"make": incremental_detokenizer}


def stream(tok, prompt_ids, output_ids, chunks, skip=True):
    detok = MAKERS["make"](tok, prompt_ids, skip_special_tokens=skip)
    deltas, i = [], 0
    for size in chunks:
        deltas.append(detok.add(output_ids[i:i + size]))
        i += size
    deltas.append(detok.add(output_ids[i:]))
    deltas.append(detok.flush())
    assert detok.text == "".join(deltas)
    return deltas


def expected(tok, prompt_ids, output_ids, skip=True):
    context = prompt_ids[-5:]
    return tok.decode(context + output_ids, skip)[len(tok.decode(context, skip)):]


def test_emoji_split_across_byte_tokens_is_held_back():
    tok = TOKENIZERS["byte_level"]
    ids = tok.encode("a😀", add_special_tokens=False)
    assert len(ids) == 5  # 'a' + four byte tokens: the emoji is not in the vocabulary
    assert stream(tok, [], ids, [1, 1, 1, 1, 1]) == ["a", "", "", "", "😀", "", ""]


def test_sentencepiece_keeps_leading_space_after_prompt():
    tok = TOKENIZERS["sentencepiece"]
    prompt, out = tok.encode("Hello", False), tok.encode("Hello world fox", False)[1:]
    assert tok.convert_ids_to_tokens(out)[0].startswith("▁")
    assert tok.decode(out) == "world fox"  # decoded alone the first space is stripped
    assert "".join(stream(tok, prompt, out, [1] * len(out))) == " world fox"
    assert "".join(stream(tok, [], out, [1] * len(out))) == "world fox"


@HYPOTHESIS
@given(data=st.data())
def test_random_ids_concatenate_to_full_decode(tok, data):
    prompt_ids = tok.encode(data.draw(st.text(max_size=20)), add_special_tokens=False)
    if tok is TOKENIZERS["byte_level"]:
        output_ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=40))
    else:
        pieces = data.draw(st.lists(_sentencepiece_piece(tok), max_size=20))
        output_ids = [i for piece in pieces for i in piece]
    chunks = data.draw(st.lists(st.integers(0, 4), max_size=20))
    skip = data.draw(st.booleans())
    text = "".join(stream(tok, prompt_ids, output_ids, chunks, skip))
    assert text == expected(tok, prompt_ids, output_ids, skip)
    if tok is TOKENIZERS["byte_level"]:
        assert text == tok.decode(output_ids, skip)


def _sentencepiece_piece(tok):
    """Any non-byte token, or the byte tokens of one whole character. A ByteFallback decoder turns a
    run of byte tokens that is not valid UTF-8 into U+FFFD *per token, retroactively* (so "<0x00>"
    decodes to "\\x00" alone but to U+FFFD once "<0x80>" follows); streaming cannot follow that and
    does not try: for such invalid runs the stream keeps the bytes that were valid when emitted."""
    byte_ids = {tok.token_to_id(f"<0x{b:02X}>") for b in range(256)}
    plain = st.integers(0, tok.vocab_size - 1).filter(lambda i: i not in byte_ids).map(lambda i: [i])
    space = tok.token_to_id("▁")
    char = st.characters(exclude_categories=("Cs",)).map(lambda c: tok.encode(c, False)).map(
        lambda ids: ids[1:] if len(ids) > 1 and ids[0] == space else ids)
    return st.one_of(plain, char)


@HYPOTHESIS
@given(text=st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\ufffd"), max_size=40),
       chunks=st.lists(st.integers(1, 3), max_size=30))
def test_split_characters_never_leak_replacement_char(tok, text, chunks):
    ids = tok.encode(text, add_special_tokens=False)
    deltas = stream(tok, [], ids, chunks)
    assert not any("\ufffd" in d for d in deltas)
    assert "".join(deltas) == tok.decode(ids)


def test_window_stays_short(tok):
    calls = []

    class Counting:
        def decode(self, ids, skip_special_tokens=True):
            calls.append(len(ids))
            return tok.decode(ids, skip_special_tokens)

    ids = tok.encode("The quick brown fox 中文 😀 jumps. " * 40, add_special_tokens=False)
    detok = incremental_detokenizer(Counting(), [], True)  # no decode_stream: the window
    for i in ids:
        detok.add([i])
    assert detok.text == tok.decode(ids)
    assert max(calls) <= 8  # a few tokens per decode, however long the output


def test_a_tokenizers_backend_gets_the_stream(detokenizer):
    for tok in TOKENIZERS.values():
        assert isinstance(incremental_detokenizer(tok, [1, 2]), StreamDetokenizer)
