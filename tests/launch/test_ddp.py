"""SFT, reward and DPO under `accelerate launch` with 2 CPU processes, exactly as the README spells the command."""

import json
import math

import pytest
from conftest import FAST, REPO, write_jsonl  # tests/conftest.py

from launch.conftest import RANK_DUMP, accelerate_launch, assert_ranks_agree, read_rank_dumps

pytestmark = pytest.mark.launch

# Files a stage writes to its output_dir; anything else (rank-suffixed copies, stray checkpoints) is a bug.
STAGE_FILES = {
    "alignkit_run.json", "alignkit_config.yaml", "all_results.json", "trainer_state.json", "training_args.bin",
    "adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json", "tokenizer_config.json",
    "chat_template.jinja",
}
EXTRA_FILES = {"dpo": {"ref"}}  # DPO on an SFT adapter also saves the frozen reference adapter it made
SFT_ROWS, BATCH, PROCESSES = 64, 8, 2


@pytest.fixture(scope="module")
def ddp_run(tiny_base, sft_messages_file, world, tmp_path_factory):
    """One launch of SFT, then reward, then DPO on the SFT adapter (one stack import for all three)."""
    root = tmp_path_factory.mktemp("ddp")
    prefs = [{k: ex[k] for k in ("prompt", "chosen", "rejected")} for ex in world.preference_examples()[:32]]
    prefs_file = write_jsonl(root / "prefs" / "train.jsonl", prefs)
    common = [*FAST, "--per_device_train_batch_size", str(BATCH), "--eval_split_size", "0", "--use_peft", "true",
              "--lora_target_modules", "all-linear", "--learning_rate", "5e-3"]
    args = [
        root / "dump",
        "sft", "--model_name_or_path", tiny_base, "--dataset_name", sft_messages_file, "--output_dir", root / "sft",
        "--num_train_epochs", "1", *common,
        ":::", "reward", "--model_name_or_path", tiny_base, "--dataset_name", prefs_file,
        "--output_dir", root / "reward", "--max_length", "64", "--max_steps", "2", *common,
        ":::", "dpo", "--model_name_or_path", root / "sft", "--dataset_name", prefs_file, "--output_dir", root / "dpo",
        "--max_length", "64", "--max_steps", "2", *common,
    ]
    result = accelerate_launch(RANK_DUMP, args, nproc=PROCESSES, config_file=REPO / "recipes/accelerate/multi_gpu.yaml")
    return root, result.stdout + result.stderr


def check_stage(root, log: str, stage: str) -> list[dict]:
    ranks = read_rank_dumps(root / "dump" / stage)
    assert_ranks_agree(ranks, world_size=PROCESSES)
    out = root / stage
    files = {p.name for p in out.iterdir()}
    assert files <= STAGE_FILES | EXTRA_FILES.get(stage, set()) and {"alignkit_run.json", "adapter_model.safetensors"} <= files, files
    assert json.loads((out / "alignkit_run.json").read_text())["stage"] == stage
    return ranks


def test_sft_under_ddp_shares_the_data_and_ends_with_equal_weights(ddp_run):
    root, log = ddp_run
    ranks = check_stage(root, log, "sft")
    # One epoch over 64 rows takes 64 / (2 processes x 8) steps only if the processes split the data.
    assert ranks[0]["global_step"] == math.ceil(SFT_ROWS / (PROCESSES * BATCH))
    assert log.count("'train_runtime'") == 3  # one training summary per stage: only the main process logs
    assert log.count("memory estimate: ~") == 3  # printed once per stage, before training


def test_reward_under_ddp_ends_with_equal_weights_and_writes_once(ddp_run):
    root, log = ddp_run
    check_stage(root, log, "reward")
    stats = json.loads((root / "reward" / "alignkit_run.json").read_text())["reward_stats"]
    assert math.isfinite(stats["mean"])


def test_dpo_under_ddp_continues_the_sft_adapter_with_equal_weights(ddp_run):
    root, log = ddp_run
    check_stage(root, log, "dpo")
    run = json.loads((root / "dpo" / "alignkit_run.json").read_text())
    assert run["lineage"]["parent_stage"] == "sft"
