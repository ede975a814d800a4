"""The Python API and the CLI end to end on a tiny random engine."""

from __future__ import annotations

import pytest

from ingot import LLM, SamplingParams
from ingot.cli import main


@pytest.fixture(scope="module")
def llm(tiny_engine):
    return LLM(tiny_engine, device="cpu")


def test_generate_returns_text_ids_and_finish_reason_in_order(llm):
    prompts = ["hello", "a longer prompt about rivers", "x"]
    outs = llm.generate(prompts, SamplingParams(max_tokens=7, temperature=0.0, ignore_eos=True))
    assert [o.prompt for o in outs] == prompts
    for out in outs:
        assert len(out.token_ids) == 7 and out.finish_reason == "length"
        assert out.text == llm.tokenizer.decode(out.token_ids)
    alone = llm.generate(prompts[1], SamplingParams(max_tokens=7, temperature=0.0, ignore_eos=True))[0]
    assert alone.token_ids == outs[1].token_ids, "batched equals alone"


def test_seed_reproduces_and_n_samples_differ(llm):
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=1234, n=3, ignore_eos=True)
    first = llm.generate("the sea", params)[0]
    second = llm.generate(["other", "the sea"], params)[1]
    assert [c.token_ids for c in first.outputs] == [c.token_ids for c in second.outputs]
    assert len(first.outputs) == 3 and [c.index for c in first.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in first.outputs}) > 1


def test_stop_token_ids_and_eos(llm):
    free = llm.generate("abc", SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))[0]
    stop_token = free.token_ids[4]
    first_index = free.token_ids.index(stop_token)
    out = llm.generate("abc", SamplingParams(max_tokens=20, temperature=0.0, stop_token_ids=[stop_token]))[0]
    assert out.finish_reason == "stop" and out.outputs[0].stop_reason == stop_token
    assert out.token_ids == free.token_ids[: first_index + 1]


def test_stop_strings_cut_the_text_and_stream_never_shows_them(llm):
    free = llm.generate("abc", SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True))[0]
    assert len(free.text) > 6, free.text
    stop = free.text[3:6]
    out = llm.generate("abc", SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True, stop=[stop]))[0]
    assert out.finish_reason == "stop" and out.outputs[0].stop_reason == stop
    assert out.text == free.text[: free.text.index(stop)]
    streamed = "".join(o.outputs[0].delta_text for o in llm.stream(
        "abc", SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True, stop=[stop])))
    assert streamed == out.text
    kept = llm.generate("abc", SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True, stop=[stop],
                                              include_stop_str_in_output=True))[0]
    assert kept.text == out.text + stop


def test_stream_deltas_add_up_to_the_final_text(llm):
    params = SamplingParams(max_tokens=25, temperature=0.8, seed=7, ignore_eos=True)
    outputs = list(llm.stream("stream me", params))
    assert outputs[-1].finished and not any(o.finished for o in outputs[:-1])
    assert "".join(o.outputs[0].delta_text for o in outputs) == outputs[-1].text
    assert outputs[-1].text == llm.generate("stream me", params)[0].text


def test_logprobs_are_returned_per_token(llm):
    out = llm.generate("abc", SamplingParams(max_tokens=5, temperature=0.0, logprobs=3, ignore_eos=True))[0]
    logprobs = out.outputs[0].logprobs
    assert len(logprobs) == 5
    for token, entry in zip(out.token_ids, logprobs):
        assert token in entry and entry[token] == max(entry.values()) and len(entry) == 3


def test_chat_applies_the_template(llm):
    messages = [{"role": "user", "content": "hi"}]
    out = llm.chat(messages, SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True))[0]
    expected = llm.tokenizer.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
                                    add_special_tokens=False)
    assert out.prompt_token_ids == expected


def test_llm_from_a_checkpoint_builds_into_the_cache_once(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("INGOT_CACHE_DIR", str(tmp_path))
    first = LLM(str(tiny_checkpoint[0]), device="cpu")
    (engine_dir,) = (tmp_path / "engines").iterdir()
    stamp = (engine_dir / "engine.json").stat().st_mtime_ns
    LLM(str(tiny_checkpoint[0]), device="cpu")
    assert (engine_dir / "engine.json").stat().st_mtime_ns == stamp, "second LLM() reused the engine"
    assert first.engine.spec.build.max_seq_len == 512, "derived from max_position_embeddings"


def test_cli_build_inspect_run(tiny_checkpoint, tmp_path, capsys):
    engine_dir = tmp_path / "e"
    assert main(["build", str(tiny_checkpoint[0]), "-o", str(engine_dir), "--max-seq-len", "256",
                 "--max-batch-size", "4", "--device", "cpu"]) == 0
    assert main(["inspect", str(engine_dir)]) == 0
    shown = capsys.readouterr().out
    assert "LlamaForCausalLM: 2 layers" in shown and "max_seq_len 256" in shown and "max_batch_size 4" in shown
    assert main(["run", str(engine_dir), "hello", "--max-tokens", "5", "--device", "cpu"]) == 0
    assert main(["run", str(engine_dir), "--chat", "hello", "--max-tokens", "5", "--device", "cpu"]) == 0
    assert main(["run", str(engine_dir), "--max-tokens", "5"]) == 2, "neither prompt nor --chat"
