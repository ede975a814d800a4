"""INT4 GEMM tiles chosen at build: the candidates are valid kernel configs, and a layer runs the
tiles of the smallest bucket that holds its token count (dequantize + cuBLAS where the table says)."""

from __future__ import annotations

import pytest

from ingot.kernels.w4a16 import W4A16Config
from ingot.quantization.int4_method import FUSED_MAX_TOKENS, Int4LinearMethod
from ingot.tactics.int4_tuning import DEQUANT, W4A16_MAX_TOKENS, int4_candidates


@pytest.mark.parametrize("m", [1, 2, 3, 4, 8, 16, 24, 32, 64, 65, 512])
def test_candidates_parse_and_fit_the_token_count(m):
    candidates = int4_candidates(m)
    assert candidates
    if m > W4A16_MAX_TOKENS:
        assert candidates == [DEQUANT]
    for name in candidates:
        if name != DEQUANT:
            config = W4A16Config.parse(name)
            assert config.block_m == 1 or config.block_m >= m, (m, name)


def test_a_layer_picks_its_bucket_and_dequantizes_where_told():
    method = Int4LinearMethod(group_size=128)
    method.in_features = 4096
    method.set_tactics({"1": "w4a16:1x64x128:w2:s2:k8", "16": "w4a16:16x128x128:w4:s3:k8", "128": DEQUANT})
    assert method._config_for(1) == W4A16Config(1, 64, 128, 2, 2, 8)
    assert method._config_for(2) == method._config_for(16) == W4A16Config(16, 128, 128, 4, 3, 8)
    assert method._config_for(17) is None and method._config_for(5000) is None
    with pytest.raises(ValueError, match="w4a16:BMxBNxBK"):
        method.set_tactics({"1": "triton:16x32x256:w4:s4"})
    method.set_tactics(None)
    assert method._config_for(1).block_m == 1 and method._config_for(FUSED_MAX_TOKENS + 1) is None
