"""`PromptTuning`: the trainable prompts of Petals' prompt tuning, held on the client.

    ptune       `prompts` [pre_seq_len, hidden]: embeddings prepended to the input's own, so the
                blocks see `pre_seq_len` extra tokens at positions 0..pre_seq_len-1.
    deep_ptune  the same, plus `deep_prompts` [num_blocks, pre_seq_len, hidden]: before block i
                the servers add deep_prompts[i] to the hidden states of those positions (see
                zswarm/models/span.py add_prompt); they travel with every request.

The servers' weights never change: these prompts (and a task head, where the model has one)
are the whole trainable set. The model drops the outputs of the prompt positions, so logits and
labels line up with the caller's input_ids.
"""
from __future__ import annotations

import torch
from torch import nn


class PromptTuning(nn.Module):
    def __init__(self, mode: str, pre_seq_len: int, num_blocks: int, embed, vocab_size: int,
                 device: torch.device | str = "cpu"):
        """`embed`: input ids -> the hidden states the first block takes (the client's embeddings)."""
        super().__init__()
        if mode not in ("ptune", "deep_ptune"):
            raise ValueError(f"tuning mode must be 'ptune' or 'deep_ptune', not {mode!r}")
        self.mode = mode
        self.pre_seq_len = pre_seq_len
        # Start from the embeddings of random vocabulary tokens: prompts then live where real
        # inputs do (a N(0, 1) start is far off the scale of small models' embeddings).
        with torch.no_grad():
            start = embed(torch.randint(0, vocab_size, (1, pre_seq_len), device=device))[0]
        self.prompts = nn.Parameter(start.detach().clone().float())
        # Zero, as in Petals: a fresh deep_ptune model computes exactly what ptune does.
        self.deep_prompts = (nn.Parameter(torch.zeros(num_blocks, pre_seq_len, start.shape[-1], device=start.device))
                             if mode == "deep_ptune" else None)

    def prepend(self, hidden: torch.Tensor) -> torch.Tensor:
        """[batch, seq, hidden] -> [batch, pre_seq_len + seq, hidden], prompts first."""
        prompts = self.prompts.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
        return torch.cat([prompts, hidden], dim=1)

    def block_prompts(self) -> torch.Tensor | None:
        """Deep prompts as the servers take them, [num_blocks, 1, pre_seq_len, hidden] (one row
        shared by the batch), or None for ptune."""
        return None if self.deep_prompts is None else self.deep_prompts.unsqueeze(1)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, pre_seq_len={self.pre_seq_len}"
