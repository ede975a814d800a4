"""Tokenizer against transformers on tokenizer directories built here (no hub access)."""

import json

import pytest
from tokenizers import Tokenizer as HFBackend
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from ingot.errors import CheckpointError, RequestError
from ingot.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "héllo café naïve résumé Ñandú straße",
    "日本語のテキスト 中文文本 한국어",
    "def f(x):\n    return x * 2  # double\n",
    "emoji 😀🎉👍🏽 and flags 🇫🇷",
]
CHATML = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('bad role: ' + m['role']) }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Exercises the environment transformers sets up: loopcontrols, tojson, extra kwargs, generation tag.
FANCY = (
    "{% for m in messages %}{% if m['role'] == 'skip' %}{% continue %}{% endif %}"
    "{% generation %}{{ m['role'] }}: {{ m['content'] | tojson }}{% endgeneration %}\n"
    "{% if loop.index >= 3 %}{% break %}{% endif %}{% endfor %}"
    "{% if tools %}tools={{ tools | tojson }}{% endif %}{{ extra_var | default('') }}"
    "{{ strftime_now('%Y') | length }}"
)
STRINGS = [
    "", "Hello world", " leading space", "trailing space ", "  runs   of\t\twhitespace\n\n\n",
    "héllo café naïve", "日本語のテキスト", "中文 mixed with English", "😀🎉👍🏽🇫🇷", "a😀b",
    "<|im_start|>user\nhi<|im_end|>", "text<s>inside</s>text", "<s>", "new\r\nlines\n", "x" * 300,
]


def _trained_backend() -> HFBackend:
    tok = HFBackend(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    return tok


def write_tokenizer_dir(path, post_bos: bool, add_bos_token: bool | None, template: str | None = CHATML,
                        generation_config: dict | None = None):
    tok = _trained_backend()
    if post_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "tokenizer_class": "PreTrainedTokenizerFast"}
    if add_bos_token is not None:
        config["add_bos_token"] = add_bos_token
    if template is not None:
        config["chat_template"] = template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    if generation_config is not None:
        (path / "generation_config.json").write_text(json.dumps(generation_config))
    return path


@pytest.fixture(scope="module", params=[(True, True), (True, None), (False, None), (False, False)],
                ids=["post-bos+add_bos", "post-bos", "no-bos", "no-bos+add_bos=false"])
def pair(request, tmp_path_factory):
    post_bos, add_bos = request.param
    path = write_tokenizer_dir(tmp_path_factory.mktemp("tok"), post_bos, add_bos)
    return Tokenizer.from_dir(path), transformers.AutoTokenizer.from_pretrained(str(path))


@pytest.mark.parametrize("text", STRINGS)
def test_encode_decode_match_transformers(pair, text):
    ours, hf = pair
    for special in (True, False):
        ids = ours.encode(text, add_special_tokens=special)
        assert ids == hf.encode(text, add_special_tokens=special)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)


def test_long_texts_take_the_gil_free_path_with_the_same_ids(pair):
    from ingot.tokenizer import LONG_TEXT_CHARS

    ours, hf = pair
    text = ("Hello <|im_start|>world, naïve café 🙂 " * (LONG_TEXT_CHARS // 20))[:LONG_TEXT_CHARS + 50]
    for special in (True, False):
        assert ours.encode(text, add_special_tokens=special) == hf.encode(text, add_special_tokens=special)


def test_special_tokens_recognised_and_single_bos(pair):
    ours, hf = pair
    ids = ours.encode("<|im_start|>user<|im_end|>", add_special_tokens=False)
    assert ids[0] == ours.token_to_id("<|im_start|>") and ids[-1] == ours.token_to_id("<|im_end|>")
    assert ours.encode("hi").count(ours.bos_token_id) <= 1
    assert ours.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
    assert ours.vocab_size == len(hf)
    assert ours.bos_token_id == hf.bos_token_id
    assert set(hf.all_special_ids) <= ours.all_special_ids


MESSAGES = [
    [{"role": "user", "content": "Hello 😀"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "日本語?"},
     {"role": "assistant", "content": "はい", "tool_calls": None}, {"role": "user", "content": "  spaced  "}],
]


@pytest.mark.parametrize("messages", MESSAGES)
@pytest.mark.parametrize("gen_prompt", [True, False])
def test_chat_template_matches_transformers(pair, messages, gen_prompt):
    ours, hf = pair
    text = ours.apply_chat_template(messages, add_generation_prompt=gen_prompt)
    assert text == hf.apply_chat_template(messages, add_generation_prompt=gen_prompt, tokenize=False)
    assert text.startswith("<s><|im_start|>")
    ids = ours.encode_chat(messages, add_generation_prompt=gen_prompt)
    hf_ids = hf.apply_chat_template(messages, add_generation_prompt=gen_prompt, tokenize=True)
    assert ids == (hf_ids["input_ids"] if isinstance(hf_ids, dict) or hasattr(hf_ids, "keys") else hf_ids)
    assert ids.count(ours.bos_token_id) == 1  # the template's BOS only, never a second one


def test_template_environment_matches_transformers(tmp_path):
    path = write_tokenizer_dir(tmp_path, post_bos=False, add_bos_token=None, template=FANCY)
    ours, hf = Tokenizer.from_dir(path), transformers.AutoTokenizer.from_pretrained(str(path))
    messages = [{"role": "user", "content": 'quote " <tag> & é'}, {"role": "skip", "content": "x"},
                {"role": "assistant", "content": "a"}, {"role": "user", "content": "b"},
                {"role": "user", "content": "never rendered"}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    kwargs = {"add_generation_prompt": False, "tools": tools, "extra_var": "EXTRA"}
    text = ours.apply_chat_template(messages, **kwargs)
    assert text == hf.apply_chat_template(messages, tokenize=False, **kwargs)
    assert '"quote \\" <tag> & é"' in text and "never rendered" not in text and "EXTRA" in text


def test_add_bos_token_when_post_processor_lacks_it(tmp_path):
    # Deliberate difference from transformers 5, which ignores add_bos_token when tokenizer.json exists.
    path = write_tokenizer_dir(tmp_path, post_bos=False, add_bos_token=True)
    ours, hf = Tokenizer.from_dir(path), transformers.AutoTokenizer.from_pretrained(str(path))
    assert ours.encode("Hello") == [ours.bos_token_id] + hf.encode("Hello")
    assert ours.encode("Hello", add_special_tokens=False) == hf.encode("Hello", add_special_tokens=False)
    assert ours.encode_chat(MESSAGES[0]).count(ours.bos_token_id) == 1


def test_eos_ids_merge_generation_config(tmp_path):
    path = write_tokenizer_dir(tmp_path, post_bos=False, add_bos_token=None,
                               generation_config={"eos_token_id": [3, 1], "bos_token_id": 0})
    tok = Tokenizer.from_dir(path)
    assert tok.eos_token_ids == (tok.token_to_id("</s>"), 3)  # "</s>" is id 1: deduplicated
    assert tok.token_to_id("<|im_end|>") == 3


def test_chat_template_jinja_file_wins(tmp_path):
    path = write_tokenizer_dir(tmp_path, post_bos=False, add_bos_token=None)
    (path / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    assert Tokenizer.from_dir(path).apply_chat_template(MESSAGES[0]) == "[Hello 😀]"


def test_no_chat_template_error_suggests_plain_prompt(tmp_path):
    tok = Tokenizer.from_dir(write_tokenizer_dir(tmp_path, post_bos=False, add_bos_token=None, template=None))
    assert not tok.has_chat_template
    with pytest.raises(RequestError, match="no chat template.*plain text prompt"):
        tok.apply_chat_template(MESSAGES[0])


def test_template_that_raises_gives_clear_error(pair):
    ours, _ = pair
    with pytest.raises(RequestError, match="rejected these messages: bad role: robot"):
        ours.apply_chat_template([{"role": "robot", "content": "beep"}])


def test_broken_template_and_missing_files(tmp_path):
    tok = Tokenizer.from_dir(write_tokenizer_dir(tmp_path, False, None, template="{% for m in messages %}"))
    # found at the first chat request, it is that request's error (a 400 from the server), naming the file
    with pytest.raises(RequestError, match=r"the chat template of .*tokenizer_config.json does not compile "
                                           r"\(TemplateSyntaxError: .*\); the template needs fixing"):
        tok.apply_chat_template(MESSAGES[0])
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        Tokenizer.from_dir(tmp_path / "missing")


def test_no_token_covers_more_text_than_the_longest_vocabulary_entry(pair):
    """The server refuses a text longer than max_input_len x this before tokenizing it (issue 21)."""
    ours, _ = pair
    longest = ours.max_token_chars
    assert longest == max(len(t) for t in ours.convert_ids_to_tokens(range(ours.vocab_size)))
    for text in [*STRINGS, *CORPUS]:
        ids = ours.encode(text, add_special_tokens=False)
        assert all(len(ours.decode([i], skip_special_tokens=False)) <= longest for i in ids), text
