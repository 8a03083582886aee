"""The real-model recipes (recipes/qwen2.5-0.5b) cannot train here (no Hub), so their files are checked instead:
every stage config parses strictly, the pipeline validates, each stage's resolved config (file + inputs) parses
as `alignkit run` would give it, the chat template is Qwen's own format, and so are the CPU check's overrides. The
stages run after the pipeline (GRPO, RLOO, best-of-n) parse too, and their memory estimates fit a 24 GB card."""

import importlib.util
import json

import pytest
import yaml
from conftest import REPO

from alignkit.config import STAGE_ARGS, parse_args
from alignkit.pipeline import load_pipeline

RECIPE_DIR = REPO / "recipes" / "qwen2.5-0.5b"
PIPELINE = RECIPE_DIR / "pipeline.yaml"
BASE = "Qwen/Qwen2.5-0.5B-Instruct"
# Stage configs run after the pipeline, from its SFT and reward outputs (each file's header gives the command).
AFTER_PIPELINE = {"grpo.yaml": "grpo", "rloo.yaml": "rloo", "best_of_n.yaml": "best_of_n"}


def stage_configs() -> dict[str, str]:
    """Each stage config file of the pipeline -> the recipe it is for."""
    stages = yaml.safe_load(PIPELINE.read_text())["stages"]
    return {spec["config"]: spec["recipe"] for spec in stages.values()}


def test_every_yaml_in_the_folder_is_a_stage_config_of_the_pipeline():
    files = {p.name for p in RECIPE_DIR.glob("*.yaml")} - {"pipeline.yaml", "cai.yaml"}  # cai.yaml: tests/cai
    assert files - set(AFTER_PIPELINE) == set(stage_configs()) == {"sft.yaml", "reward.yaml", "dpo.yaml", "ppo.yaml"}
    assert set(AFTER_PIPELINE) <= files


@pytest.mark.parametrize("config,recipe", sorted({**stage_configs(), **AFTER_PIPELINE}.items()))
def test_each_stage_config_parses_strictly(config, recipe, tmp_path):
    script_args, training_args, model_args = parse_args(
        STAGE_ARGS[recipe],
        ["--config", str(RECIPE_DIR / config), "--model_name_or_path", BASE, "--output_dir", str(tmp_path / recipe)],
    )
    # Sized for one 24 GB GPU: LoRA on bf16 weights (the checkpoint's own dtype), activation checkpointing on.
    assert model_args.use_peft and model_args.dtype == "auto" and not model_args.load_in_4bit
    assert training_args.activation_checkpointing
    sources = [script_args.dataset_name] if script_args.dataset_name else [d.path for d in script_args.datasets]
    assert sources and all(name.count("/") == 1 for name in sources)  # Hub data sets


@pytest.mark.parametrize("config,recipe", sorted(AFTER_PIPELINE.items()))
def test_the_stages_after_the_pipeline_fit_a_24gb_card_with_the_pipelines_reward_model(config, recipe, tmp_path):
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_check import CONFIGS  # Qwen2.5-0.5B's published shape
    from transformers import Qwen2Config

    from alignkit import memory

    shape = Qwen2Config(**CONFIGS["0.5b"], dtype="bfloat16")
    shape.save_pretrained(tmp_path / "reward")  # the reward stage's base: a model folder, read for its config only
    _, training_args, model_args = parse_args(STAGE_ARGS[recipe], [
        "--config", str(RECIPE_DIR / config), "--model_name_or_path", BASE, "--reward_model_path", str(tmp_path / "reward"),
        "--output_dir", str(tmp_path / recipe)])
    estimate = memory.estimate(recipe, model_args, training_args, model_config=shape)
    assert "the reward model is loaded beside the policy" in estimate.notes
    assert estimate.total < 22 / 1.16 * 2**30, estimate.summary()  # as tests/test_qlora_recipes.py sizes 7B


def test_the_pipeline_validates_and_wires_each_stage_to_its_inputs():
    pipeline = load_pipeline(PIPELINE).validate()
    assert pipeline.base_model == BASE and list(pipeline.stages) == ["sft", "reward", "dpo", "ppo"]
    settings = {name: pipeline.settings(stage) for name, stage in pipeline.stages.items()}
    out = pipeline.output_dir
    assert settings["sft"]["model_name_or_path"] == BASE
    assert settings["reward"]["model_name_or_path"] == settings["dpo"]["model_name_or_path"] == f"{out}/sft"
    assert settings["ppo"]["model_name_or_path"] == f"{out}/sft" and settings["ppo"]["reward_model_path"] == f"{out}/reward"


def test_each_resolved_stage_config_parses_as_the_runner_gives_it(tmp_path):
    pipeline = load_pipeline(PIPELINE).validate()
    for name, stage in pipeline.stages.items():
        config = tmp_path / f"{name}.yaml"
        args = pipeline.stage_args(stage, "start", config)  # what `alignkit run` hands the recipe
        _, training_args, model_args = parse_args(STAGE_ARGS[stage.recipe], args)
        assert training_args.output_dir == str(pipeline.stage_dir(name))
        assert model_args.model_revision == yaml.safe_load((RECIPE_DIR / stage.config).read_text()).get("model_revision", "main")


def test_files_the_recipes_name_exist_relative_to_the_repository_root():
    from alignkit.evaluation import load_prompts

    sft = yaml.safe_load((RECIPE_DIR / "sft.yaml").read_text())
    assert (REPO / sft["chat_template_path"]).is_file()
    prompts = load_prompts(REPO / yaml.safe_load(PIPELINE.read_text())["evaluation"]["prompts"])
    assert len(prompts) >= 16 and all(row["prompt"][0]["role"] == "user" for row in prompts)


def test_the_chat_template_renders_qwen_chatml_and_masks_only_the_answers():
    from transformers.utils.chat_template_utils import render_jinja_template
    from trl.chat_template_utils import qwen2_5_chat_template  # Qwen2.5-Instruct's own template

    ours = (RECIPE_DIR / "chat_template.jinja").read_text()
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]

    def render(template, messages, **kwargs):
        return render_jinja_template([messages], chat_template=template, eos_token="<|im_end|>", **kwargs)

    (text,), (spans,) = render(ours, chat, return_assistant_tokens_mask=True)
    # Identical to Qwen's, except that the text ends on the last <|im_end|> (Qwen adds a newline after it).
    assert text + "\n" == render(qwen2_5_chat_template, chat)[0][0]
    prompt = chat[:3]
    assert render(ours, prompt, add_generation_prompt=True)[0] == render(qwen2_5_chat_template, prompt, add_generation_prompt=True)[0]
    assert [text[start:end] for start, end in spans] == ["Hello!<|im_end|>", "Blue.<|im_end|>"]


def _check_script():
    spec = importlib.util.spec_from_file_location("real_pipeline_check", REPO / "benchmarks" / "real_pipeline_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("full_size", [False, True])
def test_the_cpu_check_overrides_name_real_keys_and_resolve(full_size, tmp_path):
    check = _check_script()
    data = {"sft": tmp_path / "sft", "preference": tmp_path / "preference", "prompts": tmp_path / "p.jsonl",
            "heldout": tmp_path / "h.jsonl"}
    sets = check.overrides(str(tmp_path / "stories260k"), data, steps=3, full_size=full_size)
    pipeline = load_pipeline(PIPELINE, sets).validate()
    assert pipeline.base_model == str(tmp_path / "stories260k") and pipeline.evaluation["prompts"] == str(data["heldout"])
    for name, stage in pipeline.stages.items():
        _, training_args, _ = parse_args(STAGE_ARGS[stage.recipe], pipeline.stage_args(stage, "start", tmp_path / f"{name}.yaml"))
        steps = training_args.num_updates if stage.recipe == "ppo" else training_args.max_steps
        assert steps == 3
        if stage.recipe != "ppo":
            assert (training_args.max_length <= 512) != full_size  # stories260k's context is 512 tokens


def test_the_check_builds_conversations_from_hh_rlhf_dialogues(tmp_path):
    import gzip

    check = _check_script()
    dialogue = "\n\nHuman: Hi there\n\nAssistant: Hello.\n\nHuman: What is 2+2?\n\nAssistant: "
    rows = [{"chosen": dialogue + f"It is 4. ({i})", "rejected": dialogue + "No idea."} for i in range(700)]
    (tmp_path / "hh-rlhf-harmless-test").mkdir()
    with gzip.open(tmp_path / "hh-rlhf-harmless-test" / "test.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    files = check.make_data(tmp_path, tmp_path / "out")
    pair = json.loads((files["preference"] / "train.jsonl").read_text().splitlines()[0])
    assert pair["prompt"] == [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello."},
                              {"role": "user", "content": "What is 2+2?"}]
    assert pair["chosen"][0]["content"].startswith("It is 4.") and pair["rejected"] == [{"role": "assistant", "content": "No idea."}]
    sft = json.loads((files["sft"] / "train.jsonl").read_text().splitlines()[0])
    assert sft["messages"][:3] == pair["prompt"] and sft["messages"][3]["role"] == "assistant"
    train = {r for r in (files["sft"] / "train.jsonl").read_text().splitlines()}
    assert not train & set((files["sft"] / "test.jsonl").read_text().splitlines())
    # --full_size: prompts long enough to fill the recipes' max_length, and no more rows than a few steps need.
    long = check.make_data(tmp_path, tmp_path / "long", long_rows=True, limit=50)
    rows = [json.loads(r) for r in (long["preference"] / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 45 and all(sum(len(t["content"]) for t in r["prompt"]) >= 1000 for r in rows)
    conversations = [json.loads(r)["messages"] for r in (long["sft"] / "train.jsonl").read_text().splitlines()]
    assert all(sum(len(t["content"]) for t in c) >= 6000 for c in conversations)


def test_conversational_pairs_longer_than_max_length_are_cut_from_the_left_not_dropped(tiny_base):
    # UltraFeedback's pairs are conversations; the reward recipe must keep a long one's latest turns (as it does
    # for text pairs) rather than let TRL drop it.
    from datasets import Dataset
    from transformers import AutoTokenizer

    from alignkit.data import truncate_prompts

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    tokenizer.chat_template = (RECIPE_DIR / "chat_template.jinja").read_text()
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "words " * 20} for i in range(12)]
    row = {"prompt": turns + [{"role": "user", "content": "And the last question?"}],
           "chosen": [{"role": "assistant", "content": "A short answer."}],
           "rejected": [{"role": "assistant", "content": "A much longer and worse answer. " * 3}]}
    length = lambda messages: len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))  # noqa: E731
    assert length(row["prompt"] + row["rejected"]) > 200
    cut = truncate_prompts(Dataset.from_list([row]), tokenizer, max_length=200)[0]
    assert cut["prompt"][-1]["content"] == "And the last question?" and len(cut["prompt"]) < len(row["prompt"])
    assert max(length(cut["prompt"] + cut["chosen"]), length(cut["prompt"] + cut["rejected"])) <= 200


def test_the_check_skips_with_a_reason_when_the_shared_data_is_absent(tmp_path):
    with pytest.raises(SystemExit, match="skipped: no real data"):
        _check_script().main(["--data_dir", str(tmp_path / "missing")])
