"""The tiny base model the demo pretrains from scratch: a world-trained tokenizer and a Llama config.

No weights are written: alignkit's pretrain recipe initialises them with
``AutoModelForCausalLM.from_config`` and pretrains on the world's raw text.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, PreTrainedTokenizerFast

from alignkit.demo.world import World

SPECIAL_TOKENS = ("<unk>", "<pad>", "</s>")
MAX_POSITIONS = 256
# Byte-level BPE spends 256 ids on bytes; the world's text saturates at ~830 tokens, all words whole.
DEFAULT_VOCAB_SIZE = 1024

# Role headers of common plain-text chat templates; training on them keeps chat prompts short.
_CHAT_MARKERS = ("### System:\n", "### User:\n", "### Assistant:\n", "\n\n", "User:", "Assistant:")


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``.

    Byte-level pre-tokenization + decoding round-trips any string exactly (spaces, newlines,
    unseen characters), so chat templates and generations decode faithfully. No BOS, no chat
    template: alignkit applies its own default template to bases without one.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,  # would rewrite " ." etc. and break exact round-trips
    )


def world_texts(world: World, n_docs: int = 3000) -> Iterator[str]:
    """Every kind of text the demo will tokenize: pretraining docs, questions, answers, chat markers."""
    yield from world.pretrain_documents(n_docs, "train")
    for ex in world.sft_examples():
        for message in ex["messages"]:
            yield message["content"]
    for ex in world.preference_examples():
        if ex["flaw"] == "garbled":  # the openers' own words, recombined: nothing new to tokenize
            continue
        for key in ("prompt", "chosen", "rejected"):
            yield ex[key][0]["content"]
    for question in world.heldout_questions():
        yield question.text
    for _ in range(20):  # repeated so their merges win against rare world words
        yield from _CHAT_MARKERS


def make_base(
    world: World,
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> Path:
    """Save a tokenizer + untrained ``LlamaConfig`` (+ generation config) for the world to ``out_dir``.

    ``seed`` is recorded in the config (``demo_seed``) for provenance only: nothing here is random
    (BPE training is deterministic) and the weights are initialised later by the pretrain recipe.
    """
    if hidden_size % 4:
        raise ValueError(f"hidden_size must be divisible by 4 attention heads, got {hidden_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = train_tokenizer(world_texts(world), vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.demo_seed = seed
    config.demo_world_seed = world.seed
    generation_config = GenerationConfig(
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )

    config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    generation_config.save_pretrained(out_dir)
    return out_dir
