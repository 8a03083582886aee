"""The Accelerate presets in recipes/accelerate/: each parses as `accelerate launch` reads it, leaves the process
count to the command line, and says when to use it. (The DDP preset runs in test_ddp.py, the ZeRO ones in
test_deepspeed.py on DeepSpeed's CPU accelerator; FSDP2 needs a GPU: benchmarks/gpu_check.py launches them all.)"""

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from conftest import REPO

PRESETS = {  # preset -> the distributed type Accelerate must read from it
    "single_gpu": "NO",
    "multi_gpu": "MULTI_GPU",
    "deepspeed_zero2": "DEEPSPEED",
    "deepspeed_zero3": "DEEPSPEED",
    "fsdp2": "FSDP",
}
FOLDER = REPO / "recipes" / "accelerate"


def test_the_folder_holds_exactly_the_documented_presets():
    assert sorted(p.stem for p in FOLDER.glob("*.yaml")) == sorted(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_a_preset_parses_leaves_num_processes_to_the_command_line_and_says_when_to_use_it(preset):
    path = FOLDER / f"{preset}.yaml"
    config = load_config_from_file(str(path))
    assert config.distributed_type.value == PRESETS[preset]
    if preset != "single_gpu":  # one process is what single_gpu means
        assert config.num_processes == -1  # unset: `--num_processes N` decides
    assert path.read_text().startswith("# ") and "accelerate launch --config_file" in path.read_text()
    args = launch_command_parser().parse_args(["--config_file", str(path), "--num_processes", "2", "train.py"])
    args, _, _ = _validate_launch_command(args)
    assert args.num_processes == 2 and args.training_script == "train.py"


def test_zero3_gathers_weights_to_save_and_fsdp2_saves_a_full_state_dict():
    zero3 = load_config_from_file(str(FOLDER / "deepspeed_zero3.yaml")).deepspeed_config
    assert zero3["zero_stage"] == 3 and zero3["zero3_save_16bit_model"] is True
    fsdp = load_config_from_file(str(FOLDER / "fsdp2.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
