"""Synthetic training data that a model can learn, so the loss falls and shows real training.

Throughput does not depend on the token values, but a benchmark that trains on pure noise cannot show that it
trains at all. Each sequence follows a fixed random successor map (token t is followed by succ[t] nine times in
ten, otherwise by a token from a small "noise" subset), so a model lowers the loss quickly by learning that map.
"""

from __future__ import annotations

import torch

FOLLOW_PROB = 0.9
NOISE_TOKENS = 1024


def synthetic_batches(
    *, vocab_size: int, batch_size: int, seq_len: int, n_batches: int, device: torch.device, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`n_batches` (inputs, targets) pairs of shape (batch_size, seq_len), made on the CPU once, then moved.

    The pool is small and cycled, so no host-to-device copy or generation happens inside the timed steps.
    """
    g = torch.Generator().manual_seed(seed)
    succ = torch.randperm(vocab_size, generator=g)
    n_seq = batch_size * n_batches
    tokens = torch.empty(n_seq, seq_len + 1, dtype=torch.long)
    tokens[:, 0] = torch.randint(vocab_size, (n_seq,), generator=g)
    follow = torch.rand(n_seq, seq_len, generator=g) < FOLLOW_PROB
    noise = torch.randint(min(NOISE_TOKENS, vocab_size), (n_seq, seq_len), generator=g)
    for t in range(seq_len):  # sequential by nature: each token depends on the previous one
        tokens[:, t + 1] = torch.where(follow[:, t], succ[tokens[:, t]], noise[:, t])
    tokens = tokens.view(n_batches, batch_size, seq_len + 1).to(device)
    return [(tokens[i, :, :-1], tokens[i, :, 1:]) for i in range(n_batches)]
