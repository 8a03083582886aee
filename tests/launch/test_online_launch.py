"""GRPO and RLOO under `accelerate launch` with 2 CPU processes (one launch for both): the ranks split the prompts,
end with the same adapter, and the outputs are written once."""

import json

import pytest
from conftest import write_jsonl  # tests/conftest.py

from launch.conftest import RANK_DUMP, accelerate_launch, assert_ranks_agree, read_rank_dumps

pytestmark = pytest.mark.launch

PROCESSES, BATCH, GENERATIONS, PROMPTS = 2, 4, 2, 8
STAGES = ("grpo", "rloo")
# What a stage continuing an SFT adapter writes to its output_dir (TRL saves the frozen reference copy in ref/).
FILES = {
    "alignkit_run.json", "alignkit_config.yaml", "all_results.json", "trainer_state.json", "training_args.bin",
    "adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json", "tokenizer_config.json",
    "chat_template.jinja", "ref",
}


@pytest.fixture(scope="module")
def online_launch(tiny_base, sft_messages_file, world, tmp_path_factory):
    """SFT and reward adapters in-process, then one 2-process launch of GRPO and then RLOO on them."""
    from launch.conftest import sft_and_reward_adapters

    root = tmp_path_factory.mktemp("online_launch")
    prefs = sft_and_reward_adapters(root, tiny_base, sft_messages_file, world)
    prompts = write_jsonl(root / "prompts.jsonl", [{"prompt": json.loads(line)["prompt"]}
                                                    for line in prefs.read_text().splitlines()[:PROMPTS]])
    args = [root / "dump"]
    for stage in STAGES:
        args += [
            stage, "--model_name_or_path", root / "sft", "--reward_model_path", root / "reward",
            "--dataset_name", prompts, "--eval_split_size", "0", "--output_dir", root / stage, "--use_peft", "true",
            "--num_train_epochs", "1", "--per_device_train_batch_size", BATCH, "--num_generations", GENERATIONS,
            "--max_completion_length", "6", "--learning_rate", "1e-2", "--seed", "0", "--save_strategy", "no",
            "--report_to", "none", "--logging_steps", "1", "--disable_tqdm", "true", "--activation_checkpointing", "false",
            ":::",
        ]  # fmt: skip
    result = accelerate_launch(RANK_DUMP, args[:-1], nproc=PROCESSES)
    return root, result.stdout + result.stderr


@pytest.mark.parametrize("stage", STAGES)
def test_online_rl_ranks_split_the_prompts_and_end_with_equal_adapters(online_launch, stage):
    root, log = online_launch
    ranks = read_rank_dumps(root / "dump" / stage)
    assert_ranks_agree(ranks, world_size=PROCESSES)
    # One epoch of 8 prompts, 2 completions each, 4 completions per process and step: 2 steps only if the two
    # processes share the prompts (one process alone takes 4).
    assert ranks[0]["global_step"] == PROMPTS * GENERATIONS // (PROCESSES * BATCH)
    out = root / stage
    files = {p.name for p in out.iterdir()}
    assert files <= FILES and {"alignkit_run.json", "adapter_model.safetensors"} <= files, files
    record = json.loads((out / "alignkit_run.json").read_text())
    assert record["stage"] == stage and record["lineage"]["parent_stage"] == "sft"
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "reward" in h] == [1, 2] and all("kl" in h for h in history if "reward" in h)


def test_only_the_main_process_logs_and_writes(online_launch):
    _, log = online_launch
    assert log.count("'train_runtime'") == len(STAGES)  # one training summary per stage
    assert log.count("memory estimate: ~") == len(STAGES)
