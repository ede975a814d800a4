"""Every `ingot build` command the planner prints parses with the real `ingot build` parser,
and what that parser lacks becomes a note, not a flag; a model whose architecture `ingot build`
does not build gets a note and no command (ingot/plan/command.py). The real parser has --tp, --pp,
--quant (INT4 and FP8) and --kv-cache-dtype (auto, fp8), but not yet --ep; a faked future parser adds
what it lacks."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex

import pytest

from ingot.commands.build import make_build_parser
from ingot.models import supported_architectures
from ingot.plan import command
from ingot.plan.gpus import GPUS
from ingot.plan.planner import make_plan
from ingot.plan.precisions import KV_DTYPES, PRECISIONS
from ingot.plan.presets import PRESETS

ENVELOPES = {  # the default one (layouts up to the first GPU count that fits), and a long one on one GPU
    "default": {},
    "long-fp8-kv-one-gpu": {"isl": 8192, "osl": 2048, "concurrency": 256, "kv_cache_dtype": "fp8", "num_gpus": 1},
}


def _parse(build_command: str, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """argparse exits on an unknown flag or a value outside its choices; fail naming the command."""
    words = shlex.split(build_command)
    assert words[:2] == ["ingot", "build"], build_command
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parser.parse_args(words[2:])
    except SystemExit:
        error = stderr.getvalue().strip().splitlines()[-1]  # after argparse's usage lines
        pytest.fail(f"the planner printed `{build_command}`, which `ingot build` rejects: {error}", pytrace=False)


# A small Llama config.json: what --model names when a plan starts from a checkpoint folder.
_TINY_LLAMA = {"architectures": ["LlamaForCausalLM"], "vocab_size": 4096, "hidden_size": 512,
               "intermediate_size": 1536, "num_hidden_layers": 4, "num_attention_heads": 8,
               "num_key_value_heads": 2, "torch_dtype": "bfloat16"}

# The flags later issues add to `ingot build`, as they will take them.
FUTURE_FLAGS = {
    "--quant": {"choices": ["fp8", "int4_awq", "int4_gptq", "w8a8_sq", "nvfp4", "mxfp4"]},
    "--kv-cache-dtype": {"choices": list(KV_DTYPES)},
    "--ep": {"type": int, "default": 1},
}


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def _action(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((action for action in parser._actions if flag in action.option_strings), None)


def _future_parser() -> argparse.ArgumentParser:
    """`ingot build` as later issues will make it: the real parser plus each FUTURE_FLAGS entry it
    still lacks. A flag it has already stays its own (adding it again would conflict) and gains
    only the future choices it lacks (--quant: fp8 and the rest beside its INT4 methods)."""
    parser = make_build_parser()
    for flag, spec in FUTURE_FLAGS.items():
        real = _action(parser, flag)
        if real is None:
            parser.add_argument(flag, **spec)
        elif real.choices is not None:
            real.choices = [*real.choices, *(c for c in spec.get("choices", ()) if c not in real.choices)]
    return parser


def _parser_with(flag: str, *choices: str) -> argparse.ArgumentParser:
    """The real parser with its `flag` offering only `choices`."""
    parser = make_build_parser()
    _action(parser, flag).choices = list(choices)
    return parser


def _parser_without(flag: str) -> argparse.ArgumentParser:
    """The real parser as it was before `flag` existed."""
    parser = make_build_parser()
    parser._handle_conflict_resolve(None, [(flag, _action(parser, flag))])  # argparse's own removal
    return parser


def _future_build(monkeypatch) -> None:
    """`ingot build` with the future parser and every preset's architecture (MoE and MLA too)."""
    monkeypatch.setattr(command, "build_parser", _future_parser)
    monkeypatch.setattr(command, "buildable_architectures",
                        lambda: {shape.architecture for shape in PRESETS.values()})


@pytest.mark.parametrize("envelope", ENVELOPES)
def test_every_printed_command_parses_with_ingot_build(envelope):
    parser = make_build_parser()
    printed, several = 0, 0
    for model in PRESETS:
        for gpu in GPUS:
            for precision in PRECISIONS:
                plan = make_plan(model, gpu, precision, **ENVELOPES[envelope])
                rec, layout = plan["recommendation"], plan["recommendation"]["layout"]
                if rec["build_command"] is None:
                    # A buildable architecture gets a command for every layout that fits (no EP here).
                    buildable = plan["model"]["architecture"] in supported_architectures()
                    assert layout is None or (rec["build_notes"] and not buildable), (model, gpu, precision)
                    continue
                args = _parse(rec["build_command"], parser)
                env = plan["envelope"]
                assert (args.max_batch_size, args.max_input_len, args.max_seq_len) == \
                    (env["concurrency"], env["isl"], env["seq_len"]), rec["build_command"]
                assert (args.tp, args.pp) == (layout["tp"], layout["pp"]), rec["build_command"]
                printed += 1
                several += layout["num_gpus"] > 1
    assert printed > 100  # the matrix prints commands, not only notes
    assert several > 10 or envelope == "long-fp8-kv-one-gpu"  # and TP/PP layouts get theirs


def test_parallel_flags_default_to_one():
    """The planner leaves out --tp/--pp/--ep of 1 because they are `ingot build`'s defaults."""
    args = _future_parser().parse_args(["MODEL", "-o", "engines/x"])
    assert (args.tp, args.pp, args.ep) == (1, 1, 1)


def test_fp8_on_one_gpu_builds_fp8():
    rec = make_plan("llama-3.1-8b", "h100", "fp8", num_gpus=1)["recommendation"]
    args = _parse(rec["build_command"], make_build_parser())
    assert (args.dtype, args.quant) == ("bf16", "fp8")
    assert "--tp" not in rec["build_command"] and "--pp" not in rec["build_command"]  # one GPU: defaults
    assert args.model == "./Llama-3.1-8B-Instruct" and args.output == "engines/llama-3.1-8b-fp8-tp1pp1"
    [note] = rec["build_notes"]  # the download note only: nothing falls back
    assert "hf download meta-llama/Llama-3.1-8B-Instruct --local-dir ./Llama-3.1-8B-Instruct" in note


def test_a_precision_ingot_build_lacks_builds_bf16_and_says_so():
    """SmoothQuant W8A8 is planned but not built yet: the command builds bf16 and the notes say so."""
    rec = make_plan("llama-3.1-8b", "h100", "w8a8_sq", num_gpus=1)["recommendation"]
    args = _parse(rec["build_command"], make_build_parser())
    assert args.dtype == "bf16" and "--quant" not in rec["build_command"]
    assert args.output == "engines/llama-3.1-8b-bf16-tp1pp1"
    notes = "\n".join(rec["build_notes"])
    assert "`ingot build` has no `--quant w8a8_sq` yet, so this command builds bf16 weights: 16.1 GB" in notes
    assert "still fits TP1 PP1 on H100 SXM 80GB" in notes


def test_the_fallback_says_when_bf16_weights_do_not_fit():
    rec = make_plan("llama-3.1-70b", "h100", "w8a8_sq", num_gpus=1)["recommendation"]
    assert rec["layout"]["fits_weights"] and "--dtype bf16" in rec["build_command"]
    assert any("builds bf16 weights: 141.1 GB instead of 72.7 GB in w8a8_sq" in n for n in rec["build_notes"])
    assert any("does not fit TP1 PP1" in n for n in rec["build_notes"])


def test_fp8_kv_cache_is_printed_with_its_calibration_text():
    """--kv-cache-dtype fp8 calibrates its scales on a text by default: the command names one."""
    rec = make_plan("llama-3.1-8b", "h100", "bf16", kv_cache_dtype="fp8", num_gpus=1)["recommendation"]
    assert " --dtype bf16 --calib-data ./calibration.txt --kv-cache-dtype fp8 --max-batch-size " in rec["build_command"]
    args = _parse(rec["build_command"], make_build_parser())
    assert (args.kv_cache_dtype, args.kv_cache_scales, args.calib_data) == ("fp8", None, "./calibration.txt")
    [note] = _calibration_notes(rec)
    assert "--kv-cache-dtype fp8 sets each layer's K and V scales" in note and "--kv-cache-scales unit" in note
    assert not any("yet" in n for n in rec["build_notes"]), rec["build_notes"]


def test_int8_kv_cache_is_omitted_with_a_note():
    """A100 has no FP8: the plan stores KV as int8, which `ingot build` does not offer."""
    rec = make_plan("llama-3.1-8b", "a100-80gb", "bf16", kv_cache_dtype="fp8", num_gpus=1)["recommendation"]
    assert "--kv-cache-dtype" not in rec["build_command"] and "--calib" not in rec["build_command"]
    assert any("no `--kv-cache-dtype int8` yet, so the KV cache is stored in the activation dtype, bf16" in n
               for n in rec["build_notes"])


def test_tensor_parallel_layout_gets_a_command():
    """Llama 70B in fp8 needs 4 x H100: `--quant fp8 --tp 4` (no `--pp 1`)."""
    rec = make_plan("llama-3.1-70b", "h100", "fp8", isl=8192, osl=2048, concurrency=64)["recommendation"]
    assert rec["layout"]["layout"] == "TP4 PP1"
    assert " --dtype bf16 --quant fp8 --tp 4 --max-batch-size 64 " in rec["build_command"]
    args = _parse(rec["build_command"], make_build_parser())
    assert (args.tp, args.pp, args.output) == (4, 1, "engines/llama-3.1-70b-fp8-tp4pp1")
    assert not any("yet" in n for n in rec["build_notes"]), rec["build_notes"]


@pytest.mark.parametrize(("model", "gpu", "words", "tp", "pp"), [
    ("llama-3.1-8b", "rtx-4090", " --dtype bf16 --quant fp8 --pp 2 --max-batch-size ", 1, 2),
    ("llama-3.1-70b", "l40s", " --dtype bf16 --quant fp8 --tp 2 --pp 2 --max-batch-size ", 2, 2),
])
def test_pipeline_layout_gets_a_command(model, gpu, words, tp, pp):
    rec = make_plan(model, gpu, "fp8")["recommendation"]
    assert (rec["layout"]["tp"], rec["layout"]["pp"]) == (tp, pp)
    assert words in rec["build_command"]
    args = _parse(rec["build_command"], make_build_parser())
    assert (args.tp, args.pp) == (tp, pp)


def test_expert_parallel_layout_prints_no_command(monkeypatch):
    """Were Qwen3-MoE in the registry, its EP8 layout still needs `--ep 8`, which `ingot build` lacks."""
    monkeypatch.setattr(command, "buildable_architectures",
                        lambda: {shape.architecture for shape in PRESETS.values()})
    rec = make_plan("qwen3-30b-a3b", "h100", "w8a8_sq", num_gpus=8)["recommendation"]
    assert rec["layout"]["layout"] == "TP8 PP1 EP8" and rec["build_command"] is None
    [note] = rec["build_notes"]
    assert "TP8 PP1 EP8 needs `--tp 8 --ep 8`; `ingot build` does not offer `--ep 8` yet" in note
    assert "nor the plan's `--quant w8a8_sq`" in note and "--num-gpus 1" in note


def test_the_future_parser_adds_only_what_ingot_build_lacks():
    """It keeps the real --tp/--pp (no conflicting option string) and adds the rest."""
    real = _option_strings(make_build_parser())
    assert {"--tp", "--pp"} <= real
    assert _option_strings(_future_parser()) == real | FUTURE_FLAGS.keys()


def test_a_parser_with_the_flags_gets_them(monkeypatch):
    """The check is driven by the parser: give it --quant/--kv-cache-dtype/--ep and the planner prints them."""
    _future_build(monkeypatch)
    rec = make_plan("llama-3.1-70b", "h100", "fp8", kv_cache_dtype="fp8", isl=8192, osl=2048,
                    concurrency=64)["recommendation"]
    assert "--dtype bf16 --quant fp8 --calib-data ./calibration.txt --kv-cache-dtype fp8 --tp 4 --max-batch-size" \
        in rec["build_command"]
    args = _parse(rec["build_command"], _future_parser())
    assert (args.quant, args.tp, args.pp) == ("fp8", 4, 1)
    assert [n for n in rec["build_notes"] if "yet" in n] == []  # only the download note is left
    moe = make_plan("qwen3-30b-a3b", "h100", "bf16", num_gpus=8)["recommendation"]
    assert "--tp 8 --ep 8 --max-batch-size" in moe["build_command"]
    assert _parse(moe["build_command"], _future_parser()).ep == 8


def test_a_flag_without_the_choice_is_not_printed(monkeypatch):
    """--quant exists but does not list fp8: the value is checked, not only the flag."""
    monkeypatch.setattr(command, "build_parser", lambda: _parser_with("--quant", "int4_awq"))
    fp8 = make_plan("llama-3.1-8b", "h100", "fp8", num_gpus=1)["recommendation"]
    assert "--quant" not in fp8["build_command"] and "no `--quant fp8` yet" in "\n".join(fp8["build_notes"])
    awq = make_plan("llama-3.1-8b", "h100", "int4_awq", num_gpus=1)["recommendation"]
    assert "--quant int4_awq" in awq["build_command"]


def _calibration_notes(rec: dict) -> list[str]:
    return [note for note in rec["build_notes"] if command.CALIB_FILE in note]


@pytest.mark.parametrize("precision", ["int4_awq", "int4_gptq"])
def test_a_calibrating_method_gets_a_calibration_text(precision):
    """AWQ and GPTQ refuse to build a real checkpoint without --calib-data: the command names a
    file, and a note says what to put in it."""
    rec = make_plan("llama-3.1-8b", "h100", precision, num_gpus=1)["recommendation"]
    assert f" --quant {precision} --calib-data ./calibration.txt --max-batch-size " in rec["build_command"]
    args = _parse(rec["build_command"], make_build_parser())
    assert (args.quant, args.calib_data, args.calib_size, args.calib_seq_len) == (precision, "./calibration.txt",
                                                                                  None, None)
    [note] = _calibration_notes(rec)
    assert "a few hundred kB of text like what the model will serve" in note
    assert "128 samples of 512 tokens by default" in note and f"--quant {precision}" in note


def test_calibration_defaults_are_the_builders():
    """The note repeats calibration.py's defaults (the planner cannot import it: it imports torch)."""
    from ingot.quantization import calibration

    assert (command.CALIB_SIZE, command.CALIB_SEQ_LEN) == (calibration.DEFAULT_CALIB_SIZE,
                                                           calibration.DEFAULT_CALIB_SEQ_LEN)


def test_calibrating_precisions_are_the_methods_that_calibrate():
    """Precision.calibrates follows the registry's schemes (int4_rtn, not a plan precision, does not)."""
    from ingot.quantization.registry import method_names, scheme_class

    built = [p for p in PRECISIONS.values() if p.quant in method_names()]
    assert {p.name for p in built} == {"int4_awq", "int4_gptq", "fp8"}
    for precision in built:  # with the method's default parameters (fp8: per_channel, no calibration)
        assert precision.calibrates == bool(scheme_class(precision.quant)().needs_calibration)
    assert not getattr(scheme_class("int4_rtn"), "needs_calibration", False)


@pytest.mark.parametrize("precision", ["bf16", "fp8", "nvfp4"])
def test_no_calibration_text_for_the_rest(precision):
    rec = make_plan("llama-3.1-8b", "h100", precision, num_gpus=1)["recommendation"]
    assert "--calib" not in rec["build_command"] and _calibration_notes(rec) == []


def test_no_calibration_text_without_the_flag_or_the_quant(monkeypatch):
    """--calib-data is checked like every flag, and follows --quant: without either, neither is printed."""
    monkeypatch.setattr(command, "build_parser", lambda: _parser_without("--calib-data"))
    rec = make_plan("llama-3.1-8b", "h100", "int4_awq", num_gpus=1)["recommendation"]
    assert "--quant int4_awq --max-batch-size" in rec["build_command"] and _calibration_notes(rec) == []
    monkeypatch.setattr(command, "build_parser", lambda: _parser_with("--quant", "int4_gptq"))
    rec = make_plan("llama-3.1-8b", "h100", "int4_awq", num_gpus=1)["recommendation"]
    assert "--quant" not in rec["build_command"] and "--calib" not in rec["build_command"]
    assert _calibration_notes(rec) == []


def test_a_config_path_plan_calibrates_too(tmp_path):
    """A config.json plans its folder as MODEL, a real checkpoint to be (the command has no
    --load-format dummy), so the calibrating method gets its text there as well."""
    (tmp_path / "config.json").write_text(json.dumps(_TINY_LLAMA))
    rec = make_plan(str(tmp_path / "config.json"), "h100", "int4_gptq", num_gpus=1)["recommendation"]
    args = _parse(rec["build_command"], make_build_parser())
    assert (args.model, args.quant, args.calib_data, args.load_format) == (str(tmp_path), "int4_gptq",
                                                                           "./calibration.txt", "auto")
    assert len(_calibration_notes(rec)) == 1


@pytest.mark.parametrize("envelope", ENVELOPES)
def test_every_command_parses_with_the_future_parser(monkeypatch, envelope):
    """Once the flags and the MoE/MLA models exist, the multi-GPU commands they allow parse too."""
    _future_build(monkeypatch)
    parser = _future_parser()
    for model in PRESETS:
        for precision in PRECISIONS:
            rec = make_plan(model, "h100", precision, **ENVELOPES[envelope])["recommendation"]
            assert (rec["build_command"] is None) == (rec["layout"] is None)
            if rec["build_command"]:
                args = _parse(rec["build_command"], parser)
                layout = rec["layout"]
                assert (args.tp, args.pp, args.ep) == (layout["tp"], layout["pp"], layout["ep"])


def test_unsupported_architecture_prints_no_command():
    """Mixtral fits 2 x H100, but `ingot build` has no Mixtral model: a note, no command."""
    rec = make_plan("mixtral-8x7b", "h100", "bf16", num_gpus=2)["recommendation"]
    assert rec["layout"]["num_gpus"] == 2 and rec["build_command"] is None
    supported = ", ".join(supported_architectures())
    assert rec["build_notes"] == [f"`ingot build` does not build MixtralForCausalLM yet (it builds {supported}), "
                                  "so there is no command to print"]
    assert "LlamaForCausalLM" in supported  # the note names the registry's list, not an empty one


@pytest.mark.parametrize("parser", [make_build_parser, _future_parser])
def test_architecture_comes_before_the_flags(monkeypatch, parser):
    """With or without --ep, nothing is printed for a model `ingot build` cannot build, and the
    one note is the architecture's, not the flags'."""
    monkeypatch.setattr(command, "build_parser", parser)
    rec = make_plan("qwen3-30b-a3b", "h100", "bf16", num_gpus=8)["recommendation"]
    assert rec["build_command"] is None and len(rec["build_notes"]) == 1
    assert "does not build Qwen3MoeForCausalLM yet" in rec["build_notes"][0]


def test_an_architecture_in_the_registry_gets_a_command(monkeypatch):
    """The check is driven by the registry: list Mixtral there and its command is printed again."""
    monkeypatch.setattr(command, "buildable_architectures",
                        lambda: set(supported_architectures()) | {"MixtralForCausalLM"})
    one = make_plan("mixtral-8x7b", "h100", "fp8", num_gpus=1)["recommendation"]
    assert one["build_command"].startswith("ingot build ./Mixtral-8x7B-Instruct-v0.1 -o ")
    _parse(one["build_command"], make_build_parser())
    two = make_plan("mixtral-8x7b", "h100", "bf16", num_gpus=2)["recommendation"]
    assert two["layout"]["layout"] == "TP2 PP1" and " --tp 2 " in two["build_command"]
    assert _parse(two["build_command"], make_build_parser()).tp == 2


def test_buildable_architectures_are_the_registry():
    assert command.buildable_architectures() == set(supported_architectures())


def test_build_parser_is_the_one_ingot_build_mounts():
    """`ingot build` and make_build_parser share one definition of the flags."""
    from ingot.commands import build

    sub = argparse.ArgumentParser().add_subparsers()
    build.register(sub)
    mounted = {flag for action in sub.choices["build"]._actions for flag in action.option_strings}
    alone = {flag for action in make_build_parser()._actions for flag in action.option_strings}
    assert mounted == alone and {"-o", "--dtype", "--max-batch-size"} <= alone
