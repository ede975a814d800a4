"""E4M3 arithmetic against torch's float8_e4m3fn casts: every code, the ties between codes,
subnormals, saturation at 448 and NaN; scaling into the format and back."""

from __future__ import annotations

import math

import torch

from ingot.quantization.fp8_format import (E4M3_MAX, FP8_DTYPE, dequantize, quantize, quantize_per_row,
                                           quantize_per_tensor, round_to_e4m3, to_fp8)


def _all_finite_codes() -> torch.Tensor:
    values = torch.arange(256, dtype=torch.int16).to(torch.uint8).view(FP8_DTYPE).float()
    return values[~values.isnan()].unique()  # sorted; +0 and -0 compare equal


def test_every_code_is_a_fixed_point_and_the_grid_is_e4m3():
    codes = _all_finite_codes()
    assert codes.max().item() == E4M3_MAX and codes.min().item() == -E4M3_MAX
    positive = codes[codes > 0]
    assert positive[0].item() == 2.0 ** -9 and len(positive) == 126  # 7 subnormals + 15 binades of 8, less the NaN code
    assert torch.equal(round_to_e4m3(codes), codes)
    assert torch.equal(to_fp8(codes).float(), codes)


def test_ties_round_to_even_like_the_cast():
    codes = _all_finite_codes()
    midpoints = (codes[1:] + codes[:-1]) / 2  # exactly halfway: the even mantissa wins
    nudged = torch.cat([midpoints, torch.nextafter(midpoints, torch.full_like(midpoints, math.inf)),
                        torch.nextafter(midpoints, torch.full_like(midpoints, -math.inf))])
    assert torch.equal(round_to_e4m3(nudged), to_fp8(nudged).float())
    assert round_to_e4m3(torch.tensor([1.0625])).item() == 1.0  # between 1 and 1.125: to the even 1.0
    assert round_to_e4m3(torch.tensor([1.1875])).item() == 1.25


def test_subnormals_and_random_values_across_the_range_match_the_cast():
    generator = torch.Generator().manual_seed(0)
    magnitudes = torch.exp2(torch.empty(200_000).uniform_(-14, 10, generator=generator))
    signs = torch.where(torch.rand(200_000, generator=generator) < 0.5, -1.0, 1.0)
    x = magnitudes * signs
    assert torch.equal(round_to_e4m3(x), to_fp8(x).float())
    tiny = torch.tensor([2.0 ** -10, 1.5 * 2.0 ** -10, 2.0 ** -9 * 3.5, 2.0 ** -12])
    assert round_to_e4m3(tiny).tolist() == [0.0, 2.0 ** -9, 2.0 ** -7, 0.0]  # 2^-10 is a tie: to the even 0


def test_saturation_at_448_and_nan():
    x = torch.tensor([448.0, 449.0, 464.0, 479.0, 1e6, math.inf, -1e6, -math.inf, math.nan])
    expected = [448.0, 448.0, 448.0, 448.0, 448.0, 448.0, -448.0, -448.0]
    assert round_to_e4m3(x)[:-1].tolist() == expected and round_to_e4m3(x)[-1].isnan()
    assert to_fp8(x).float()[:-1].tolist() == expected and to_fp8(x).float()[-1].isnan()
    assert torch.equal(x[:-1].to(FP8_DTYPE).float(), torch.tensor(expected))  # torch's cast saturates alike


def test_quantize_then_dequantize_is_the_grid_times_the_scale():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 96, generator=generator) * torch.logspace(-3, 2, 16).unsqueeze(1)
    q, scale = quantize_per_row(x)
    assert q.dtype == FP8_DTYPE and scale.shape == (16, 1)
    assert torch.equal(q.float().abs().amax(dim=1), torch.full((16,), E4M3_MAX))  # each row's largest hits 448
    assert torch.equal(dequantize(q, scale), round_to_e4m3(x / scale) * scale)
    q, scale = quantize_per_tensor(x)
    assert scale.shape == (1,) and torch.equal(scale, (x.abs().max() / E4M3_MAX).reshape(1))
    assert torch.equal(dequantize(q, scale), round_to_e4m3(x / scale) * scale)
    zeros, zero_scale = quantize_per_row(torch.zeros(2, 8))
    assert torch.equal(dequantize(zeros, zero_scale), torch.zeros(2, 8))
    assert torch.equal(quantize(x, torch.tensor(2.0)).float(), round_to_e4m3(x / 2))
