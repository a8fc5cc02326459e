"""`AutoDistributedModelForSequenceClassification`: a trainable classification head on the
swarm's blocks, like transformers' *ForSequenceClassification.

    model = AutoDistributedModelForSequenceClassification.from_pretrained(
        MODEL, initial_peers=[...], num_labels=2, tuning_mode="ptune", pre_seq_len=8)
    loss = model(input_ids, attention_mask=mask, labels=labels).loss

The head (`score`, hidden -> num_labels, no bias) reads the final-normed hidden state of each
row's last real token: the last 1 of `attention_mask` (right padding), else the last token that
is not `pad_token_id`, else the last token. It and the tuned prompts are the trainable set.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutputWithPast

from zswarm.client.base import DistributedModelBase


class AutoDistributedModelForSequenceClassification(DistributedModelBase):
    model_kwargs = ("num_labels", "problem_type")

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.num_labels = config.num_labels
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False,
                               device=self.parts.device, dtype=torch.float32)
        nn.init.normal_(self.score.weight, std=getattr(config, "initializer_range", 0.02))

    @classmethod
    def prepare_config(cls, config, *, num_labels: int = 2, problem_type: str | None = None):
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels must be a positive int, not {num_labels!r}")
        if problem_type not in (None, "regression", "single_label_classification", "multi_label_classification"):
            raise ValueError(f"unknown problem_type {problem_type!r}")
        config.num_labels = num_labels   # transformers also rebuilds id2label/label2id from it
        config.problem_type = problem_type
        return config

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                return_dict: bool | None = None, **kwargs) -> SequenceClassifierOutputWithPast:
        hidden = self.parts.norm(self.run_blocks(input_ids, inputs_embeds, attention_mask))
        last = self._last_token(input_ids, attention_mask, hidden.shape[:2])
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        logits = self.score(pooled.to(self.score.weight.dtype))
        loss = None if labels is None else self._loss(logits, labels)
        return SequenceClassifierOutputWithPast(loss=loss, logits=logits)

    def _last_token(self, input_ids, attention_mask, shape) -> torch.Tensor:
        batch, seq = shape
        if attention_mask is not None:
            return attention_mask.long().sum(dim=-1).clamp(min=1) - 1   # right padding only (run_blocks checks)
        pad = self.config.pad_token_id
        if input_ids is not None and pad is not None:
            real = (input_ids != pad).long()
            positions = torch.arange(seq, device=input_ids.device)
            return (positions * real).argmax(dim=-1)   # the last non-pad token, as transformers does
        return torch.full((batch,), seq - 1, dtype=torch.long)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        problem = self.config.problem_type
        if problem is None:
            if self.num_labels == 1:
                problem = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
        labels = labels.to(logits.device)
        if problem == "regression":
            return nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
        if problem == "single_label_classification":
            return nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
