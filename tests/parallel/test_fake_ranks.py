"""A multi-rank layout in one process: build a tp=2 (and tp=4, pp=2) engine, load every rank's
file into its own model, and show the ranks' slices recombine into the unsplit layers: column
outputs concatenate, row outputs sum. Collectives are replaced by the identity here so each
rank's partial result can be inspected; the real multi-process runtime is tested in
test_distributed.py."""

from __future__ import annotations

import json

import pytest
import torch

from ingot.attention import AttentionMetadata, get_backend
from ingot.builder.build import build_engine
from ingot.config import BuildConfig, ParallelConfig
from ingot.engine_format import ENGINE_JSON, rank_file, read_spec
from ingot.errors import ConfigError
from ingot.models import create_model
from ingot.runtime.loader import fill_weights
from tests.tiny_models import make_checkpoint

BUILD = BuildConfig(dtype="fp32", max_batch_size=4, max_input_len=32, max_seq_len=64, max_num_tokens=32,
                    tokens_per_block=8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """8 query heads, 2 KV heads: tp=2 splits the KV heads, tp=4 must replicate them. Every linear
    layer has a bias, so a row-parallel bias added on every rank (not once) would show."""
    directory = tmp_path_factory.mktemp("tp-ckpt")
    make_checkpoint(directory, "LlamaForCausalLM", seed=5, hidden_size=64, num_attention_heads=8,
                    num_key_value_heads=2, intermediate_size=96, num_hidden_layers=3, attention_bias=True,
                    mlp_bias=True)
    return directory


def _build(checkpoint, tmp_path_factory, name, **parallel):
    directory = tmp_path_factory.mktemp("tp-engines") / name
    build_engine(str(checkpoint), directory, BUILD, device="cpu", parallel=ParallelConfig(**parallel))
    return directory


def _rank_models(engine_dir):
    spec = read_spec(engine_dir)
    models = []
    for rank in spec.mapping.ranks:
        model = create_model(spec, get_backend("torch"), rank.rank, device="cpu")
        model.rotary.reset_cache()
        fill_weights(model, engine_dir / rank_file(rank.rank))
        models.append(model.eval())
    return spec, models


@pytest.fixture(scope="module")
def full(checkpoint, tmp_path_factory):
    return _rank_models(_build(checkpoint, tmp_path_factory, "tp1"))[1][0]


@pytest.fixture(autouse=True)
def _no_collectives(monkeypatch):
    """Each rank returns its partial (row) or local (column) result, to be combined by the test."""
    for module in ("ingot.layers.linear", "ingot.layers.vocab"):
        monkeypatch.setattr(f"{module}.all_reduce", lambda x, tp_size: x)
        monkeypatch.setattr(f"{module}.all_gather_last_dim", lambda x, tp_size: x, raising=False)


@pytest.mark.parametrize("tp", [2, 4])
def test_column_and_row_slices_recombine_into_the_unsplit_layers(checkpoint, tmp_path_factory, full, tp):
    engine_dir = _build(checkpoint, tmp_path_factory, f"tp{tp}", tp=tp)
    spec, ranks = _rank_models(engine_dir)
    assert sorted(p.name for p in engine_dir.glob("rank*.safetensors")) == [rank_file(r) for r in range(tp)]
    assert json.loads((engine_dir / ENGINE_JSON).read_text())["parallel"]["world_size"] == tp
    torch.manual_seed(tp)
    x = torch.randn(5, 64)
    for i in range(3):
        whole, parts = full.layers[str(i)], [m.layers[str(i)] for m in ranks]
        # column: gate_up rank outputs are [gate_r | up_r]; concatenated by section they give [gate | up]
        gate_up = [p.mlp.gate_up_proj(x).chunk(2, dim=-1) for p in parts]
        merged = torch.cat([torch.cat([g for g, _ in gate_up], -1), torch.cat([u for _, u in gate_up], -1)], -1)
        torch.testing.assert_close(merged, whole.mlp.gate_up_proj(x))
        # row: the MLP's partial sums (bias added on rank 0 only) add up to the unsplit MLP
        torch.testing.assert_close(sum(p.mlp(x) for p in parts), whole.mlp(x), rtol=1e-5, atol=1e-5)
        # q/k/v by heads: a rank's query heads and the KV heads they read (replicated when tp > 2)
        q, k, v = whole.self_attn.qkv_proj(x).split([8 * 8, 2 * 8, 2 * 8], dim=-1)
        for rank, p in enumerate(parts):
            qr, kr, vr = p.self_attn.qkv_proj(x).split([p.self_attn.q_size, p.self_attn.kv_size,
                                                       p.self_attn.kv_size], dim=-1)
            heads, kv_head = 8 // tp, (rank * 2) // tp
            kv_cols = slice(kv_head * 8, (kv_head + max(2 // tp, 1)) * 8)
            torch.testing.assert_close(qr, q[:, rank * heads * 8:(rank + 1) * heads * 8])
            torch.testing.assert_close(kr, k[:, kv_cols])
            torch.testing.assert_close(vr, v[:, kv_cols])
        # attention end to end: each rank attends with its heads; o_proj partials sum to the whole
        torch.testing.assert_close(sum(_attention(p.self_attn, x) for p in parts), _attention(whole.self_attn, x),
                                   rtol=1e-4, atol=1e-5)


def test_vocabulary_split_recombines_embedding_and_logits(checkpoint, tmp_path_factory, full):
    spec, ranks = _rank_models(_build(checkpoint, tmp_path_factory, "tp2-vocab", tp=2))
    ids = torch.tensor([0, 155, 156, 310, 42])  # 311 ids: rank 0 holds [0, 156), rank 1 [156, 312) with one pad
    torch.testing.assert_close(sum(m.embed_tokens(ids) for m in ranks), full.embed_tokens(ids))
    hidden = torch.randn(3, 64)
    logits = torch.cat([m.compute_logits(hidden) for m in ranks], dim=-1)[:, :311]
    torch.testing.assert_close(logits, full.compute_logits(hidden), rtol=1e-5, atol=1e-5)
    assert ranks[1].embed_tokens.weight[-1].abs().sum() == 0, "the padded vocabulary row is zero"


def test_pipeline_stages_hold_their_layers_only(checkpoint, tmp_path_factory, full):
    engine_dir = _build(checkpoint, tmp_path_factory, "pp2", pp=2)
    spec, ranks = _rank_models(engine_dir)
    assert [r.layers for r in spec.mapping.ranks] == [(0, 2), (2, 3)]
    first, last = ranks
    assert list(first.layers) == ["0", "1"] and list(last.layers) == ["2"]
    assert first.embed_tokens is not None and first.lm_head is None and first.norm is None
    assert last.embed_tokens is None and last.norm is not None
    # untied embeddings here: the last stage's lm_head equals the full model's
    torch.testing.assert_close(last.lm_head.weight, full.lm_head.weight)


def test_tied_embeddings_on_a_last_stage_get_their_own_copy(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tied-ckpt")
    make_checkpoint(directory, "LlamaForCausalLM", seed=2, tie_word_embeddings=True)
    spec, (first, last) = _rank_models(_build(directory, tmp_path_factory, "tied-pp2", pp=2))
    torch.testing.assert_close(last.lm_head.weight, first.embed_tokens.weight)


def test_layouts_the_model_cannot_take_are_refused_with_the_numbers(checkpoint, tmp_path):
    with pytest.raises(ConfigError, match=r"num_attention_heads=8 is not divisible by tp=3"):
        build_engine(str(checkpoint), tmp_path / "e", BUILD, device="cpu", parallel=ParallelConfig(tp=3))
    with pytest.raises(ConfigError, match=r"pp=4 stages for 3 layers"):
        build_engine(str(checkpoint), tmp_path / "e", BUILD, device="cpu", parallel=ParallelConfig(pp=4))
    with pytest.raises(ConfigError, match=r"ep=2: LlamaForCausalLM has no experts"):
        build_engine(str(checkpoint), tmp_path / "e", BUILD, device="cpu", parallel=ParallelConfig(tp=2, ep=2))
    assert not (tmp_path / "e").exists()


def _attention(attn, x):
    """One sequence of len(x) new tokens through a layer's attention, on a fresh paged cache."""
    num_tokens, block = x.shape[0], 8
    cache = torch.zeros(2, 3, block, attn.num_kv_heads, attn.head_dim)
    meta = AttentionMetadata(
        query_start_loc=torch.tensor([0, num_tokens], dtype=torch.int32),
        seq_lens=torch.tensor([num_tokens], dtype=torch.int32),
        block_tables=torch.tensor([[1, 2]], dtype=torch.int32),
        slot_mapping=torch.arange(block, block + num_tokens), query_start_loc_cpu=[0, num_tokens],
        seq_lens_cpu=[num_tokens], max_query_len=num_tokens, max_seq_len=num_tokens)
    return attn(torch.arange(num_tokens), x, cache, meta)


def test_inspect_shows_the_mapping_and_every_rank_file(checkpoint, tmp_path_factory, capsys):
    from ingot.cli import main

    engine_dir = _build(checkpoint, tmp_path_factory, "tp2-pp2-inspect", tp=2, pp=2)
    assert main(["inspect", str(engine_dir)]) == 0
    out = capsys.readouterr().out
    assert "parallel       tp 2, pp 2, ep 1: 4 rank(s)" in out
    assert "  rank 3       tp rank 1, stage 1, layers [2, 3)" in out
    assert all(f"rank{r}.safetensors" in out for r in range(4))
    assert "quantization none: every weight in the model dtype; KV cache auto" in out and "12 tensors" in out
