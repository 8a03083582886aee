"""The benchmarks' CPU-runnable paths: the same code as on a GPU, a tiny model, a couple of steps."""

import json
import subprocess
import sys

from conftest import REPO


def test_gpu_check_runs_every_mode_and_a_preset_launch_on_a_tiny_model(tmp_path):
    out = tmp_path / "gpu_check.json"
    cmd = [sys.executable, "benchmarks/gpu_check.py", "--sizes", "tiny", "--steps", "2", "--ppo_updates", "1",
           "--max_length", "64", "--presets", "single_gpu", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["qlora_4bit", "lora_bf16", "ppo_lora", "preset_single_gpu"]
    assert all("error" not in r for r in rows), rows
    assert all(r["tokens_per_s"] > 0 for r in rows[:2]) and rows[2]["seconds_per_update"] > 0
    assert all(r["estimate_gib"] > 0 for r in rows)  # printed beside each measured peak
    preset = rows[3]
    assert preset["distributed_type"] == "NO" and preset["num_processes"] == 1 and preset["adapter_reloaded"]
    assert proc.stdout.count("memory estimate: ~") == 2  # each recipe run prints one before training


def test_the_memory_estimate_is_within_25_percent_of_the_measured_peak_at_the_tiny_size():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import memory_estimate

    rows = memory_estimate.main(["--sizes", "tiny", "--stages", "sft,reward", "--steps", "1"])
    assert [r["stage"] for r in rows] == ["sft", "reward"]
    assert all(0.75 <= r["ratio"] <= 1.25 for r in rows), rows


def hh_like_file(path, n=30):
    """hh-rlhf-shaped pairs (implicit prompt): some dialogues too long for max_length 128, some answers alone too."""
    import gzip

    rows = []
    for i in range(n):
        history = "".join(f"\n\nHuman: Where does animal {j} live?\n\nAssistant: The fox lives in the hills." for j in range(i % 4 * 3))
        prompt = f"{history}\n\nHuman: What color is fox {i}?\n\nAssistant:"
        chosen = " The fox is red." + (" It lives in the hills and eats berries." * 20 if i % 5 == 0 else "")
        rows.append({"chosen": prompt + chosen, "rejected": prompt + " Go away, you fool."})
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def run_benchmark(name, tiny_base, tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    module = __import__(name)
    out = tmp_path / f"{name}.json"
    results = module.main(["--data", str(hh_like_file(tmp_path / "hh.jsonl.gz")), "--base", str(tiny_base), "--out", str(out),
                           "--limit", "25", "--max_steps", "2", "--max_length", "128"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    return results


def test_the_reward_benchmark_scores_both_trainers_on_every_held_out_pair(tiny_base, tmp_path):
    results = run_benchmark("reward_hh", tiny_base, tmp_path)
    # train_test_split(test_size=0.2) of the first 25 rows: 20 training pairs, 5 held out, every one scored.
    assert (results["train_pairs_in_split"], results["heldout_n"]) == (20, 5)
    assert results["alignkit_train_pairs_dropped"] == 0 and results["alignkit_train_pairs"] == 20
    assert results["trl_train_pairs_dropped"] > 0  # plain TRL drops the pairs longer than max_length
    assert all(0 <= results[f"{n}_accuracy"] <= 1 for n in ("alignkit", "trl"))
    assert all(results[f"{n}_wall_s"] > 0 for n in ("alignkit", "trl"))
    assert results["settings"]["lora_r"] == 16 and results["settings"]["max_length"] == 128


def test_the_dpo_benchmark_scores_both_trainers_implicit_rewards_on_every_held_out_pair(tiny_base, tmp_path):
    results = run_benchmark("dpo_hh", tiny_base, tmp_path)
    assert (results["train_pairs_in_split"], results["heldout_n"]) == (20, 5)
    assert results["alignkit_train_pairs_dropped"] == 0 and results["trl_train_pairs_dropped"] == 0  # keep_end: none
    assert all(0 <= results[f"{n}_accuracy"] <= 1 for n in ("alignkit", "trl"))
    assert all(results[f"{n}_chosen_reward"] != 0 for n in ("alignkit", "trl"))  # the adapters moved off the reference
    assert all(results[f"{n}_wall_s"] > 0 for n in ("alignkit", "trl"))
    assert results["settings"]["beta"] == 0.1 and results["settings"]["truncation_mode"] == "keep_end"


def test_overhead_benchmark_runs_one_alternated_pair_and_writes_positive_ratios(tmp_path):
    import math

    out = tmp_path / "overhead.json"
    cmd = [sys.executable, "benchmarks/overhead.py", "--runs", "1", "--warmup", "0", "--stages", "sft", "--steps", "3",
           "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    for key in ("sft_step_ratio", "startup_ratio", "sft_startup_ratio", "sft_peak_rss_ratio"):
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, (key, result[key])
    sft = result["stages"]["sft"]
    assert sft["runs"] == 1
    for side in ("trl", "alignkit"):  # both sides ran every step and were measured
        assert sft[side]["startup_s"] > sft[side]["first_step_s"] > 0 and sft[side]["step_s"] > 0
        assert sft[side]["peak_rss_mib"] > 0
    assert "alignkit / TRL" in proc.stdout
