"""Measurements of a trained stage that TRL does not log."""

from __future__ import annotations

import torch

from alignkit.metrics.scores import mean_margin, pairwise_accuracy


@torch.no_grad()
def reward_stats(trainer, batch_size: int | None = None, max_pairs: int = 2000) -> dict[str, float]:
    """
    A reward model's scores on its eval split (train if none), read from the trainer's own tokenised pairs so
    they are scored exactly as in training: pairwise accuracy and mean margin, the score distribution (for
    normalising rewards later), and a length-bias check — how often the model prefers the longer answer of a
    pair, beside how often the data's chosen answer is the longer one. At most `max_pairs` pairs, spread evenly
    over the split: enough for these statistics, and a large split without eval would otherwise cost as long again
    as training (17 s of 4,000 training pairs after a 30-step run).
    """
    dataset = trainer.eval_dataset if trainer.eval_dataset is not None else trainer.train_dataset
    if len(dataset) > max_pairs:
        dataset = dataset.select(sorted({i * len(dataset) // max_pairs for i in range(max_pairs)}))
    batch_size = batch_size or trainer.args.per_device_eval_batch_size  # pairs per forward, as in evaluation
    model = trainer.model
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = trainer.data_collator(rows)  # chosen sequences first, then rejected ones
        scores = model(input_ids=batch["input_ids"].to(model.device), attention_mask=batch["attention_mask"].to(model.device)).logits[:, 0]
        chosen.append(scores[: len(rows)].float().cpu())
        rejected.append(scores[len(rows) :].float().cpu())
    model.train(was_training)
    chosen, rejected = torch.cat(chosen), torch.cat(rejected)
    chosen_len = torch.tensor([len(r) for r in dataset["chosen_ids"]])
    rejected_len = torch.tensor([len(r) for r in dataset["rejected_ids"]])
    unequal = chosen_len != rejected_len
    chosen_longer = chosen_len > rejected_len
    prefers_longer = torch.where(chosen > rejected, chosen_longer, ~chosen_longer)
    everything = torch.cat([chosen, rejected])
    return {
        "pairs": len(dataset),
        "accuracy": pairwise_accuracy(chosen.tolist(), rejected.tolist()),
        "margin": mean_margin(chosen.tolist(), rejected.tolist()),
        "mean": everything.mean().item(),
        "std": everything.std().item(),
        "prefers_longer": prefers_longer[unequal].float().mean().item() if unequal.any() else float("nan"),
        "chosen_longer": chosen_longer[unequal].float().mean().item() if unequal.any() else float("nan"),
    }
