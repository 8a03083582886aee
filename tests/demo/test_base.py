"""The demo base: world tokenizer + untrained Llama config that load back by path, offline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from alignkit.demo.base import make_base, train_tokenizer, world_texts
from alignkit.demo.world import World, make_world


@pytest.fixture(scope="module")
def world() -> World:
    return make_world(0)


@pytest.fixture(scope="module")
def base_dir(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_base(world, tmp_path_factory.mktemp("base"))


def _samples(world: World) -> list[str]:
    sft = world.sft_examples()[0]["messages"]
    pref = world.preference_examples()[0]
    return [
        world.pretrain_documents(1)[0],
        "\n".join(world.pretrain_documents(5, "test")),
        f"### User:\n{sft[0]['content']}\n### Assistant:\n{sft[1]['content']}\n",
        f"### System:\nBe nice.\n\n### User:\n{pref['prompt'][0]['content']}\n### Assistant:\n{pref['rejected'][0]['content']}",
        "  leading and trailing spaces,\ttabs\r\n and ünïcödé ✓ never seen in training  \n\n",
    ]


def test_tokenizer_round_trips_exactly(world: World) -> None:
    tok = train_tokenizer(world_texts(world, n_docs=300), vocab_size=600)
    assert len(tok) == 600
    for text in _samples(world):
        ids = tok.encode(text)
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text


def test_tokenizer_specials_and_no_chat_template(world: World) -> None:
    tok = train_tokenizer(world_texts(world, n_docs=300))
    assert tok.chat_template is None
    assert tok.bos_token is None
    assert (tok.eos_token, tok.pad_token, tok.unk_token) == ("</s>", "<pad>", "<unk>")
    assert len({tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}) == 3
    # no special tokens are added implicitly (TRL appends EOS itself)
    ids = tok("The fox is red.")["input_ids"]
    assert tok.eos_token_id not in ids and tok.pad_token_id not in ids


def test_world_words_are_mostly_single_tokens(world: World, base_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(base_dir)
    assert 512 <= len(tok) <= 1024
    words = {w for doc in world.pretrain_documents(300) for w in re.findall(r" [a-z]+", doc)}
    words |= {f" {e}" for e in world.facts}
    single = [w for w in words if len(tok.encode(w)) == 1]
    assert len(single) / len(words) >= 0.95


def test_base_loads_back_by_path(base_dir: Path) -> None:
    names = {p.name for p in base_dir.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith((".safetensors", ".bin", ".pt")) for n in names)  # config only, no weights

    tok = AutoTokenizer.from_pretrained(base_dir)
    config = AutoConfig.from_pretrained(base_dir)
    gen = GenerationConfig.from_pretrained(base_dir)
    assert tok.chat_template is None
    assert config.model_type == "llama"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 2, 4)
    assert config.intermediate_size == 256 and config.max_position_embeddings == 256
    assert config.vocab_size == len(tok)
    assert config.tie_word_embeddings
    assert config.bos_token_id is None
    assert config.eos_token_id == gen.eos_token_id == tok.eos_token_id
    assert config.pad_token_id == gen.pad_token_id == tok.pad_token_id


def test_model_from_config_is_tiny_and_runs(base_dir: Path) -> None:
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_dir))
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    batch = tok(["### User:\nWhat color is the fox?\n### Assistant:\n", "The fox is red."], padding=True, return_tensors="pt")
    out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape[:2] == batch["input_ids"].shape
    assert out.logits.shape[-1] == len(tok)
    assert torch.isfinite(out.loss)


def test_make_base_is_deterministic(world: World, base_dir: Path, tmp_path: Path) -> None:
    again = make_base(world, tmp_path / "again")
    for name in ("tokenizer.json", "config.json", "generation_config.json"):
        assert (again / name).read_bytes() == (base_dir / name).read_bytes()
