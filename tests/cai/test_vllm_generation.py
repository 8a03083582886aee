"""Generation with vLLM (critique_revise, ai_feedback): what alignkit hands vLLM and what it makes of the answers.

vLLM needs a CUDA GPU, so a stand-in `vllm` package (its `LLM`, `SamplingParams` and `LoRARequest`, as alignkit calls
them) runs the real tiny model with transformers from the token ids it is given: any difference in prompt tokens,
stop tokens, decoding or adapter handling changes the answers these tests compare.
"""

import json
import sys
import textwrap

import pytest
import torch
from conftest import FAST, run_stage, write_jsonl
from trl import ModelConfig

from alignkit import models
from alignkit.errors import ConfigError
from alignkit.evaluation import vllm_generation
from alignkit.evaluation.generation import generate

STAND_IN = '''
"""A stand-in for vLLM's offline API: the engine runs the model with transformers from the prompt's token ids."""
from types import SimpleNamespace

import torch
from transformers import AutoModelForCausalLM

ENGINES = []


class SamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class LLM:
    def __init__(self, **kwargs):
        self.kwargs, self.calls, self.answers = kwargs, [], []
        self.model = AutoModelForCausalLM.from_pretrained(kwargs["model"]).eval()
        ENGINES.append(self)

    def generate(self, prompts, sampling_params, lora_request=None, use_tqdm=True):
        self.calls.append((prompts, sampling_params, lora_request))
        model = self.model
        if lora_request is not None:
            from peft import PeftModel
            model = PeftModel.from_pretrained(self.model, lora_request.lora_path)
        sampled = sampling_params.temperature > 0
        results = []
        for prompt in prompts:
            ids = torch.tensor([prompt["prompt_token_ids"]])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=sampling_params.max_tokens,
                                 do_sample=sampled, temperature=sampling_params.temperature if sampled else None,
                                 top_k=0 if sampled else None, top_p=1.0, eos_token_id=sampling_params.stop_token_ids,
                                 pad_token_id=sampling_params.stop_token_ids[0])
            results.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=tuple(out[0, ids.shape[1]:].tolist()))]))
        self.answers.append([r.outputs[0].token_ids for r in results])
        return results
'''


@pytest.fixture
def stand_in_vllm(tmp_path, monkeypatch):
    package = tmp_path / "site" / "vllm"
    (package / "lora").mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(STAND_IN))
    (package / "lora" / "__init__.py").write_text("")
    (package / "lora" / "request.py").write_text(
        "class LoRARequest:\n    def __init__(self, lora_name, lora_int_id, lora_path):\n"
        "        self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield
    for name in [n for n in sys.modules if n == "vllm" or n.startswith("vllm.")]:
        del sys.modules[name]


def engines():
    return sys.modules["vllm"].ENGINES


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    return models.load_tokenizer(ModelConfig(model_name_or_path=str(tiny_base)))


QUESTIONS = [[{"role": "user", "content": q}] for q in ("What color is the fox?", "Where does the owl live?",
                                                        "What does the bear eat?")]


def test_greedy_answers_from_vllm_are_the_transformers_answers(stand_in_vllm, tiny_base, tokenizer):
    model = models.load_model(ModelConfig(model_name_or_path=str(tiny_base)), tokenizer=tokenizer).eval()
    expected = generate(model, tokenizer, QUESTIONS, max_new_tokens=12, batch_size=1)
    with vllm_generation.VLLMGenerator(str(tiny_base), tokenizer, max_new_tokens=12, do_sample=False, seed=3) as answer:
        assert answer(QUESTIONS) == expected
        (engine,) = engines()
        assert engine.kwargs["model"] == str(tiny_base) and engine.kwargs["seed"] == 3
        assert engine.kwargs["skip_tokenizer_init"] and "enable_lora" not in engine.kwargs
        (prompts, sampling, lora), = engine.calls
        assert sampling.temperature == 0.0 and sampling.stop_token_ids == [tokenizer.eos_token_id] and lora is None
        rendered = [tokenizer.apply_chat_template(q, tokenize=False, add_generation_prompt=True) for q in QUESTIONS]
        assert [p["prompt_token_ids"] for p in prompts] == [tokenizer(t, add_special_tokens=False)["input_ids"]
                                                             for t in rendered]
    assert answer.llm is None  # closed on leaving: the engine's memory goes before training


def test_an_adapter_is_served_as_a_lora_over_its_base_and_answers_as_the_adapter_does(stand_in_vllm, tiny_base, tokenizer,
                                                                                   tmp_path):
    from peft import LoraConfig, get_peft_model

    base = models.load_model(ModelConfig(model_name_or_path=str(tiny_base)), tokenizer=tokenizer)
    torch.manual_seed(0)
    adapter = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                              init_lora_weights=False))  # random B: the adapter changes the answers
    adapter.save_pretrained(tmp_path / "adapter")
    merged = models.load_model(ModelConfig(model_name_or_path=str(tmp_path / "adapter")), tokenizer=tokenizer).eval()
    plain = models.load_model(ModelConfig(model_name_or_path=str(tiny_base)), tokenizer=tokenizer).eval()
    expected = generate(merged, tokenizer, QUESTIONS, max_new_tokens=12, batch_size=1)
    assert expected != generate(plain, tokenizer, QUESTIONS, max_new_tokens=12, batch_size=1)

    with vllm_generation.VLLMGenerator(str(tmp_path / "adapter"), tokenizer, max_new_tokens=12, do_sample=False) as answer:
        assert answer(QUESTIONS) == expected
    (engine,) = engines()
    assert engine.kwargs["model"] == str(tiny_base) and engine.kwargs["enable_lora"] and engine.kwargs["max_lora_rank"] == 4
    assert engine.calls[0][2].lora_path == str(tmp_path / "adapter")


def test_use_vllm_unset_takes_vllm_only_when_it_is_installed_and_there_is_a_gpu(stand_in_vllm, monkeypatch):
    for installed, gpu in ((True, True), (True, False), (False, True)):
        monkeypatch.setattr(vllm_generation, "vllm_installed", lambda: installed)
        monkeypatch.setattr(vllm_generation, "cuda_available", lambda: gpu)
        assert vllm_generation.wants_vllm(None) is (installed and gpu)
        assert vllm_generation.wants_vllm(False) is False


def test_use_vllm_true_where_it_cannot_run_is_refused_when_the_config_is_read(monkeypatch):
    from alignkit.cai import AIFeedbackConfig, CritiqueReviseConfig

    monkeypatch.setattr(vllm_generation, "vllm_installed", lambda: False)
    with pytest.raises(ConfigError, match=r'vLLM is not installed: pip install "alignkit\[vllm\]"'):
        AIFeedbackConfig(use_vllm=True)
    monkeypatch.setattr(vllm_generation, "vllm_installed", lambda: True)
    monkeypatch.setattr(vllm_generation, "cuda_available", lambda: False)
    with pytest.raises(ConfigError, match="needs a CUDA GPU and none is visible"):
        CritiqueReviseConfig(output_dir="out", use_cpu=True, use_vllm=True)
    with pytest.raises(ConfigError, match=r"`vllm_gpu_memory_utilization` must be in \(0, 1\], got 0"):
        AIFeedbackConfig(vllm_gpu_memory_utilization=0)


def test_ai_feedback_samples_with_vllm_when_it_can_and_compares_with_the_transformers_model(stand_in_vllm, monkeypatch,
                                                                                          tiny_base, tmp_path):
    monkeypatch.setattr(vllm_generation, "cuda_available", lambda: True)  # the stand-in runs on the CPU
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": q} for q in QUESTIONS * 4])
    run_stage("ai_feedback", "--model_name_or_path", str(tiny_base), "--dataset_name", str(prompts),
              "--output_dir", str(tmp_path / "out"), "--constitution", "demo", "--max_new_tokens", "8", "--seed", "5")
    (engine,) = engines()
    assert engine.kwargs["seed"] == 5 and [s.temperature for _, s, _ in engine.calls] == [1.0, 1.0]
    sampled = {tuple(p["prompt_token_ids"]) for prompts_, _, _ in engine.calls for p in prompts_}
    assert len([p for prompts_, _, _ in engine.calls for p in prompts_]) == 2 * 12 and len(sampled) == 3
    rows = [json.loads(line) for line in (tmp_path / "out" / "preference" / "train.jsonl").read_text().splitlines()]
    assert rows and all(0.5 <= r["label"] <= 1 for r in rows)


def test_critique_revise_generates_every_round_with_vllm_then_trains_with_transformers(stand_in_vllm, monkeypatch,
                                                                                     tiny_base, tokenizer, tmp_path):
    monkeypatch.setattr(vllm_generation, "cuda_available", lambda: True)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": q} for q in QUESTIONS])
    (tmp_path / "c.yaml").write_text("principles:\n  - {id: polite, critique: 'Rude?', revision: Politely., comparison: 'Polite?'}\n"
                                     "  - {id: honest, critique: 'True?', revision: Truly., comparison: 'True?'}\n")
    trainer = run_stage("critique_revise", "--model_name_or_path", str(tiny_base), "--dataset_name", str(prompts),
                        "--output_dir", str(tmp_path / "out"), "--constitution", str(tmp_path / "c.yaml"),
                        "--principles", "polite", "--num_revisions", "2",
                        "--max_new_tokens", "6", "--do_sample", "true", "--eval_split_size", "0", "--max_steps", "1",
                        *FAST)
    (engine,) = engines()
    assert [len(prompts_) for prompts_, _, _ in engine.calls] == [3] * (1 + 2 * 2)  # answer, then critique + revision x2
    records = [json.loads(line) for line in (tmp_path / "out" / "critique_revise.jsonl").read_text().splitlines()]
    first = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in engine.answers[0]]
    last = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in engine.answers[-1]]
    assert [r["initial_answer"] for r in records] == first and [r["revision"] for r in records] == last
    assert all(s.temperature == 1.0 for _, s, _ in engine.calls)
    assert all(r["principles"] == ["polite", "polite"] for r in records)  # `honest` is left out
    assert trainer.state.global_step == 1
