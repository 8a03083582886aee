"""Tokenizer and model loading: one path for Hub ids and folders, a usable pad token and chat template."""

import pytest
from transformers import AutoTokenizer
from trl import ModelConfig

from alignkit import models
from alignkit.errors import ModelError


def test_a_base_without_template_or_pad_gets_alignkits_template_and_eos_as_pad(tiny_base, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    loaded = models.load_tokenizer(ModelConfig(model_name_or_path=str(tmp_path)))
    assert loaded.pad_token == loaded.eos_token
    text = loaded.apply_chat_template(
        [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}], tokenize=False
    )
    assert text == "### User:\nHi?\n### Assistant:\nHello." + loaded.eos_token


def test_a_base_with_its_own_template_keeps_it_and_chat_template_path_overrides_both(tiny_base, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer.save_pretrained(tmp_path)
    assert models.load_tokenizer(ModelConfig(model_name_or_path=str(tmp_path))).chat_template == tokenizer.chat_template
    custom = tmp_path / "mine.jinja"
    custom.write_text("{{ messages[0]['content'] }}")
    loaded = models.load_tokenizer(ModelConfig(model_name_or_path=str(tmp_path)), chat_template_path=str(custom))
    assert loaded.chat_template == "{{ messages[0]['content'] }}"


def test_the_default_template_masks_exactly_the_answer_and_its_eos(tiny_base):
    tokenizer = models.load_tokenizer(ModelConfig(model_name_or_path=str(tiny_base)))
    messages = [{"role": "user", "content": "What color is the fox?"}, {"role": "assistant", "content": "The fox is red."}]
    out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    answer = [i for i, m in zip(ids, mask) if m]
    assert tokenizer.decode(answer) == "The fox is red." + tokenizer.eos_token
    assert mask[-len(answer):] == [1] * len(answer) and sum(mask) == len(answer)


@pytest.mark.parametrize("name", ["./no/such/folder", "/tmp/alignkit-missing-model"])
def test_a_missing_local_model_fails_with_a_short_message(name):
    with pytest.raises(ModelError, match="not found"):
        models.load_tokenizer(ModelConfig(model_name_or_path=name))


def test_an_unreachable_hub_id_fails_fast_offline():
    with pytest.raises(ModelError, match="Could not load the tokenizer from 'nobody/nothing-here'"):
        models.load_tokenizer(ModelConfig(model_name_or_path="nobody/nothing-here"))


def test_a_tokenizer_bigger_than_the_models_embeddings_is_refused(tiny_base):
    model = models.load_model(ModelConfig(model_name_or_path=str(tiny_base)))
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    tokenizer.add_tokens([f"<new{i}>" for i in range(2000)])
    with pytest.raises(ModelError, match="embeddings"):
        models.check_vocab(model, tokenizer, str(tiny_base))
