"""Prompt-tune a model you do not hold: SmolLM2 learns a sentiment task through a local swarm.

    python examples/prompt_tune_sentiment.py                 # ptune, 24 steps, 2 server processes
    python examples/prompt_tune_sentiment.py --mode deep_ptune --steps 20

Starts a DHT bootstrap node and `zswarm-server` processes on loopback (each hosts a share of
the blocks, weights frozen), then trains only `pre_seq_len` prompt embeddings on this side:
every step's forward and backward go through the servers. The task is built here: tiny movie
reviews, and the model must answer " positive" or " negative" after "Sentiment:". The loss is
on that answer token only. Prints the loss of each step and the held-out accuracy before and after.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without installing

import torch  # noqa: E402

POSITIVE = ["I loved this film", "A wonderful, warm story", "The acting was brilliant", "Great fun from start to end",
            "What a beautiful movie", "I would watch it again", "The music is lovely", "A true delight",
            "Funny and clever", "The best film this year", "It made me smile all day", "Superb direction",
            "An excellent cast", "Charming and sweet", "I enjoyed every minute", "A moving, joyful ending",
            "Pure magic", "Fantastic visuals and a great plot", "Heartwarming", "A masterpiece"]
NEGATIVE = ["I hated this film", "A dull, boring story", "The acting was terrible", "A waste of two hours",
            "What an ugly movie", "I will never watch it again", "The music is awful", "A true disaster",
            "Stupid and lazy", "The worst film this year", "It made me angry", "Poor direction",
            "A weak cast", "Painfully slow", "I regretted every minute", "A sad, pointless ending",
            "Complete rubbish", "Cheap effects and a silly plot", "Unbearable", "A mess"]
ANSWERS = (" negative", " positive")


def build_task(tokenizer, seed: int = 0):
    """(train, held_out): lists of (prompt token ids, label 0/1)."""
    rows = [(f"Review: {text}\nSentiment:", label) for label, texts in enumerate((NEGATIVE, POSITIVE)) for text in texts]
    random.Random(seed).shuffle(rows)
    encoded = [(tokenizer(text).input_ids, label) for text, label in rows]
    return encoded[:32], encoded[32:]


def batch_of(rows, answer_ids, pad_id):
    """Right-padded ids + answer token, the attention mask, labels only on the answer."""
    width = max(len(ids) for ids, _ in rows) + 1
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (prompt, label) in enumerate(rows):
        n = len(prompt)
        ids[i, :n], ids[i, n] = torch.tensor(prompt), answer_ids[label]
        mask[i, :n + 1] = 1
        labels[i, n] = answer_ids[label]
    return ids, mask, labels


@torch.no_grad()
def accuracy(model, rows, answer_ids, pad_id) -> float:
    ids, mask, _ = batch_of(rows, answer_ids, pad_id)
    logits = model(ids, attention_mask=mask).logits
    last = mask.sum(dim=1) - 2   # the position that predicts the answer
    scores = logits[torch.arange(len(rows)), last][:, answer_ids]
    return (scores.argmax(dim=-1) == torch.tensor([label for _, label in rows])).float().mean().item()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="zswarm/SmolLM2-135M-Instruct-Q4_1",
                        help="checkpoint dir or hub id (default: the embedded SmolLM2-135M-Instruct, from its Q4_1 GGUF)")
    parser.add_argument("--mode", choices=("ptune", "deep_ptune"), default="ptune")
    parser.add_argument("--pre-seq-len", type=int, default=8)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per server")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from zswarm import AutoDistributedModelForCausalLM
    from zswarm.testing.launch import LocalSwarm, split_blocks
    from zswarm.models import resolve_model

    torch.manual_seed(args.seed)
    source = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    answer_ids = [tokenizer(answer).input_ids[-1] for answer in ANSWERS]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train, held_out = build_task(tokenizer, args.seed)

    with tempfile.TemporaryDirectory(prefix="zswarm-ptune-") as workdir:
        swarm = LocalSwarm(args.model, source.model_id, source.num_blocks, workdir)
        model = None
        try:
            servers = [swarm.start(f"server-{i}", a, b, threads=args.threads)
                       for i, (a, b) in enumerate(split_blocks(source.num_blocks, args.servers))]
            print(f"starting {args.servers} servers for {source.num_blocks} blocks of {source.model_id}...", flush=True)
            swarm.wait_online(*servers, timeout=300)
            model = AutoDistributedModelForCausalLM.from_pretrained(
                args.model, initial_peers=swarm.initial_peers, tuning_mode=args.mode, pre_seq_len=args.pre_seq_len,
                wire_dtype="float32", show_route=False)
            trainable = [p for p in model.parameters() if p.requires_grad]
            print(f"trainable: {sum(p.numel() for p in trainable):,} parameters on this side "
                  f"({args.mode}, pre_seq_len={args.pre_seq_len}); the servers' weights stay frozen")
            print(f"held-out accuracy before: {accuracy(model, held_out, answer_ids, pad_id):.2f}")
            optimizer = torch.optim.Adam(trainable, lr=args.lr)
            order = random.Random(args.seed)
            for step in range(1, args.steps + 1):
                rows = order.sample(train, args.batch)
                ids, mask, labels = batch_of(rows, answer_ids, pad_id)
                began = time.perf_counter()
                loss = model(ids, attention_mask=mask, labels=labels).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                print(f"step {step:3d}/{args.steps}  loss {loss.item():.4f}  ({time.perf_counter() - began:.1f} s)",
                      flush=True)
            print(f"held-out accuracy after:  {accuracy(model, held_out, answer_ids, pad_id):.2f}")
        finally:
            if model is not None:
                model.close()
            swarm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
