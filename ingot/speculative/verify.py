"""Verifying draft tokens: which of them the target model accepts.

A request with drafts d_1 .. d_k (proposed deterministically: prompt lookup, or a draft model
decoding greedily) is computed for k + 1 positions in one step, giving the target's
distributions p_0 .. p_k after the last accepted token and after each draft. Speculative
sampling (Leviathan et al. 2023; Chen et al. 2023) accepts d_{i+1} with probability
min(1, p_i(d_{i+1}) / q_i(d_{i+1})) and on rejection samples from max(0, p_i - q_i), normalised.
For a point-mass proposal q_i = delta(d_{i+1}) that is:

    accept d_{i+1} with probability p_i(d_{i+1});  else sample from p_i without d_{i+1}, renormalised,

so the token emitted at position i has law p_i exactly. Drawing t_i ~ p_i and accepting d_{i+1}
iff t_i = d_{i+1} has the same law, and is what the runner does: it samples a target token t_i at
every position as plain decoding would (greedy requests take the argmax, and so get exactly the
tokens plain decoding gives), then

    a = max { a : t_i = d_{i+1} for all i < a },    emit d_1 .. d_a, t_a     (a + 1 tokens)

and the KV of the k - a rejected drafts is rewound. (A draft model that samples its drafts needs
q in the rule; that arrives with such a proposer.)
"""

from __future__ import annotations


def emitted_tokens(drafts: list[int], targets: list[int]) -> list[int]:
    """d_1 .. d_a, t_a: the accepted drafts and the target's token after them (len(targets) = len(drafts) + 1)."""
    assert len(targets) == len(drafts) + 1, (len(drafts), len(targets))
    accepted = 0
    while accepted < len(drafts) and drafts[accepted] == targets[accepted]:
        accepted += 1
    return drafts[:accepted] + [targets[accepted]]
