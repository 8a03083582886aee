"""GRPO, RLOO and best_of_n under `accelerate launch` with 2 CPU processes (one launch for all three): the ranks split
the prompts, end with the same adapter, and the outputs are written once."""

import json

import pytest
from conftest import FAST, run_stage, write_jsonl  # tests/conftest.py

from launch.conftest import RANK_DUMP, accelerate_launch, assert_ranks_agree, read_rank_dumps

pytestmark = pytest.mark.launch

PROCESSES, BATCH, GENERATIONS, PROMPTS = 2, 4, 2, 8
STAGES = ("grpo", "rloo")
BON_MAX_STEPS = 2
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
    # best_of_n keeps only answers that end with EOS: its policy is a full SFT model trained long enough to end them.
    run_stage("sft", "--model_name_or_path", str(tiny_base), "--dataset_name", str(sft_messages_file),
              "--output_dir", str(root / "sft_full"), *FAST, "--max_steps", "40", "--learning_rate", "1e-2")
    args += [
        "best_of_n", "--model_name_or_path", root / "sft_full", "--reward_model_path", root / "reward",
        "--dataset_name", prompts, "--eval_split_size", "0", "--output_dir", root / "best_of_n", "--use_peft", "true",
        "--num_generations", GENERATIONS, "--max_completion_length", "16", "--generation_batch_size", "2",
        "--iterations", "2", "--max_steps", BON_MAX_STEPS, "--per_device_train_batch_size", "2", "--learning_rate", "1e-2",
        "--seed", "0", "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1", "--disable_tqdm", "true",
        "--activation_checkpointing", "false",
    ]  # fmt: skip
    result = accelerate_launch(RANK_DUMP, args, nproc=PROCESSES)
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
    # One training summary per stage (best_of_n: one per iteration), one memory estimate per stage.
    assert log.count("'train_runtime'") == len(STAGES) + 2
    assert log.count("memory estimate: ~") == len(STAGES) + 1
    assert log.count("best_of_n iteration 1: kept") == 1


def test_best_of_n_ranks_sample_their_own_share_and_keep_each_prompt_once(online_launch):
    from alignkit.best_of_n import kept_path

    root, _ = online_launch
    ranks = read_rank_dumps(root / "dump" / "best_of_n")
    assert_ranks_agree(ranks, world_size=PROCESSES)
    prompts = [json.loads(line)["prompt"] for line in (root / "prompts.jsonl").read_text().splitlines()]
    stats = json.loads((root / "best_of_n" / "alignkit_run.json").read_text())["best_of_n"]
    for iteration, round_stats in enumerate(stats, 1):
        # The counts are summed over the processes: 8 prompts in all, so each process sampled only its share of them.
        assert round_stats["prompts"] == PROMPTS and round_stats["iteration"] == iteration
        rows = [json.loads(line) for line in kept_path(root / "best_of_n", iteration).read_text().splitlines()]
        kept = [r["prompt"] for r in rows]
        # Written once, each kept prompt once, in prompt order (rank 0's share first), with n candidates each.
        assert len(rows) == round_stats["kept"] and kept == [p for p in prompts if p in kept] and len(kept) > PROMPTS // 2
        assert all(len(r["candidate_scores"]) == GENERATIONS for r in rows)
    # The SFT of the last round trained as one DDP run (2 steps of 2 rows a process).
    assert ranks[0]["global_step"] == BON_MAX_STEPS
