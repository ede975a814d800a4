"""GPTQ (Frantar et al., 2023): quantize a weight column by column, pushing each column's rounding
error onto the columns not yet quantized, weighted by the inverse Hessian of the layer's loss.

For a linear layer fed inputs X (tokens x K), the loss of a weight change dW is ||X dW^T||^2,
whose Hessian over a row of W is H = 2 X^T X (K x K, shared by every row). Quantizing column j
to q_j with the remaining columns free, the optimal update of the columns after j is

    dW[:, j+1:] = -(w_j - q_j) / [H^-1]_jj * [H^-1]_{j, j+1:}

taken from the upper Cholesky factor U of H^-1 (U_jj and U_{j, j+1:} play those roles, and stay
valid as columns are eliminated). Columns are processed in lazy blocks of 128 (updates inside the
block at once, to the rest of the matrix once per block); H is damped by `damp` x mean(diag H)
so it is invertible; columns no input ever touches are set to zero. With act_order the columns
go in decreasing order of diag(H) (the most active first, while the most freedom remains); the
groups of the stored layout then follow that order, and the layer reads its input through the
permutation (`perm`), so each group's columns stay contiguous and the kernel never gathers scales.
"""

from __future__ import annotations

import torch

from ingot.quantization.int4_format import QMAX, group_min_max, num_groups, pack, scales_and_zeros

BLOCK = 128


def gptq_quantize(w: torch.Tensor, hessian: torch.Tensor, group_size: int, dtype: torch.dtype,
                  damp: float = 0.01, act_order: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(qweight, scales, zeros, perm) of W (N, K) in ingot's INT4 layout; perm is None without act_order
    (else the stored column i is input column perm[i])."""
    w = w.float().clone()
    h = hessian.float().clone()
    n, k = w.shape
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(h), descending=True)
        w, h = w[:, perm], h[perm][:, perm]
    h += damp * torch.mean(torch.diag(h)) * torch.eye(k, device=h.device)
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    codes = torch.zeros((n, k), dtype=torch.uint8, device=w.device)
    scales = torch.zeros((n, num_groups(k, group_size)), dtype=dtype, device=w.device)
    zeros = torch.zeros_like(scales, dtype=torch.uint8)
    for start in range(0, k, BLOCK):
        end = min(start + BLOCK, k)
        errors = _quantize_block(w, upper, start, end, group_size, codes, scales, zeros)
        w[:, end:] -= errors @ upper[start:end, end:]
    return pack(codes), scales, zeros, (perm.to(torch.int32) if perm is not None else None)


def _quantize_block(w, upper, start, end, group_size, codes, scales, zeros) -> torch.Tensor:
    """Columns [start, end): quantize each, spread its error over the block's later columns; the
    scaled errors (N, end - start) for the update of the columns after the block. A group never
    straddles two blocks (the group size divides BLOCK), so its grid is read from the block."""
    block = w[:, start:end].clone()
    errors = torch.zeros_like(block)
    diagonal = torch.diagonal(upper)[start:end].tolist()
    for i in range(end - start):
        column = start + i
        group = column // group_size
        if column % group_size == 0:  # a group starts: its grid from its columns as updated so far
            s, z = scales_and_zeros(*group_min_max(block[:, i:i + group_size], group_size), scales.dtype)
            scales[:, group], zeros[:, group] = s[:, 0], z[:, 0]
            s, z = scales[:, group].float(), zeros[:, group].float()
        q = torch.clamp(torch.round(block[:, i] / s) + z, 0, QMAX)
        codes[:, column] = q.to(torch.uint8)
        error = (block[:, i] - (q - z) * s) / diagonal[i]
        block[:, i:].addr_(error, upper[column, column:end], alpha=-1.0)
        errors[:, i] = error
    return errors
