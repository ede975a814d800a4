"""The same evaluation with transformers on the same weights: the reference ingot's figures are
checked against (`ingot eval perplexity --compare CHECKPOINT`). Needs the `transformers` package."""

from __future__ import annotations

from pathlib import Path

from ingot.errors import CheckpointError, ConfigError
from ingot.eval.perplexity import Perplexity, summarize, windows


def load_transformers_model(checkpoint: str, dtype: str):
    """A Hugging Face folder, a .gguf file or an ingot preset, loaded by transformers (GGUF
    dequantized by transformers' own reader) in `dtype` (fp32 | fp16 | bf16), on the CPU, eval mode."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ConfigError("--compare runs transformers, which is not installed: pip install transformers") from exc
    from ingot.builder.presets import resolve_preset

    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    path = Path(checkpoint).expanduser()
    if not path.exists():
        path = resolve_preset(checkpoint) or path
    if path.is_dir():
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    elif path.suffix.lower() == ".gguf":
        model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch_dtype)
    else:
        raise CheckpointError(f"--compare {checkpoint}: not a checkpoint folder, a .gguf file or a preset")
    return model.eval()


def transformers_perplexity(model, token_ids: list[int], window: int, stride: int) -> Perplexity:
    """Each window through the model once; log-softmax in float32 over its logits."""
    import torch

    spans = windows(len(token_ids), window, stride)
    nll = []
    with torch.inference_mode():
        for w in spans:
            ids = torch.tensor([token_ids[w.begin:w.end]])
            logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
            targets = torch.tensor(token_ids[w.first_scored:w.end])
            rows = torch.arange(w.first_scored - w.begin - 1, w.end - w.begin - 1)
            nll.append(-logprobs[rows, targets].sum().item())
    return summarize(nll, spans, len(token_ids), window, stride)
