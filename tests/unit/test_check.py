"""`alignkit check`: what it shows for a good config (the preview with the loss mask, dropped rows, memory), how it
finds the stage, how it checks a pipeline whose stages have not run yet, and that it writes nothing."""

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from alignkit import check, stages

OWL = [{"role": "user", "content": "What does the owl eat?"}, {"role": "assistant", "content": "Mice."}]


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _config(path: Path, **settings) -> Path:
    path.write_text(yaml.safe_dump({k: str(v) if isinstance(v, Path) else v for k, v in settings.items()}))
    return path


def _check(argv, capsys) -> tuple[int, str, str]:
    try:
        check.main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def test_a_good_sft_config_passes_and_previews_the_trained_tokens(tiny_base, tmp_path, capsys):
    data = _jsonl(tmp_path / "chat.jsonl", [{"messages": OWL}] * 6)
    config = _config(tmp_path / "sft.yaml", model_name_or_path=tiny_base, dataset_name=data,
                     output_dir=tmp_path / "out", max_length=64)
    before = _tree(tmp_path)
    code, out, err = _check([config], capsys)
    assert code == 0, err
    assert "stage sft" in out and "no problems found" in out
    preview = [line for line in out.splitlines() if line.strip().startswith("row 1")]
    assert len(preview) == 1 and "loss on     the assistant's turns only" in out
    # The default template trains on the assistant's turn (with its end-of-turn token), never on the question.
    trained = preview[0].split("«", 1)[1]
    assert trained.startswith("Mice.") and trained.rstrip().endswith("»")
    assert "What does the owl eat?" in preview[0].split("«", 1)[0]
    assert "memory" in out
    assert _tree(tmp_path) == before  # nothing written, not even the output folder


def test_a_template_without_generation_markers_shows_the_questions_are_trained_too(tiny_base, tmp_path, capsys):
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    data = _jsonl(tmp_path / "chat.jsonl", [{"messages": OWL}] * 4)
    config = _config(tmp_path / "sft.yaml", model_name_or_path=tiny_base, dataset_name=data, output_dir=tmp_path / "out",
                     chat_template_path=template)
    code, out, _ = _check([config], capsys)
    assert code == 0
    assert "loss on     every token, questions included" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("row 1"))
    assert "«user: What does the owl eat?" in row


def test_prompt_completion_rows_train_on_the_completion_only(tiny_base, tmp_path, capsys):
    data = _jsonl(tmp_path / "pc.jsonl", [{"prompt": "The owl eats", "completion": " mice."}] * 4)
    config = _config(tmp_path / "c.yaml", model_name_or_path=tiny_base, dataset_name=data, output_dir=tmp_path / "out")
    code, out, _ = _check([config, "--stage", "sft"], capsys)
    assert code == 0
    row = next(line for line in out.splitlines() if line.strip().startswith("row 1"))
    assert "The owl eats«" in row and "mice." in row.split("«", 1)[1]
    assert "loss on     the completions only" in out


def test_dpo_preview_marks_both_answers_and_the_shared_prompt_is_not_trained(tiny_base, tmp_path, capsys):
    data = _jsonl(tmp_path / "p.jsonl", [{"prompt": [OWL[0]], "chosen": [OWL[1]],
                                         "rejected": [{"role": "assistant", "content": "Rocks."}]}] * 4)
    config = _config(tmp_path / "dpo.yaml", model_name_or_path=tiny_base, dataset_name=data, output_dir=tmp_path / "out")
    code, out, _ = _check([config], capsys)
    assert code == 0
    rows = [line for line in out.splitlines() if line.strip().startswith("row 1")]
    assert [r.split()[2] for r in rows] == ["chosen:", "rejected:"]
    assert "«Mice." in rows[0] and "«Rocks." in rows[1]
    assert "What does the owl eat?" in rows[0].split("«")[0]


def test_rows_longer_than_max_length_are_counted(tiny_base, tmp_path, capsys):
    long = [{"role": "user", "content": "owl " * 60}, {"role": "assistant", "content": "Mice."}]
    data = _jsonl(tmp_path / "d.jsonl", [{"messages": OWL}] * 6 + [{"messages": long}] * 3)
    config = _config(tmp_path / "sft.yaml", model_name_or_path=tiny_base, dataset_name=data,
                     output_dir=tmp_path / "out", max_length=40, eval_split_size=0)
    code, out, _ = _check([config], capsys)
    assert code == 0
    assert "3 of 9 training rows are longer than max_length=40 and will be dropped" in out


@pytest.mark.parametrize(
    "name, settings, stage",
    [("sft.yaml", {}, "sft"), ("recipes/m/dpo/lora.yaml", {}, "dpo"), ("c.yaml", {"reward_model_path": "x", "kl_coef": 0.2}, "ppo"),
     ("c.yaml", {"beta": 0.1, "loss_type": ["sigmoid"], "loss_weights": [1.0]}, "dpo"),
     ("c.yaml", {"center_rewards_coefficient": 0.1}, "reward")],
)
def test_the_stage_comes_from_the_file_name_or_the_keys_only_it_has(name, settings, stage):
    assert check.infer_stage(name, {"learning_rate": 1e-4, **settings}) == stage


def test_the_stage_comes_from_its_keys_with_other_trl_versions_too(tmp_path, monkeypatch):
    stale = tmp_path / "keys.json"  # a key list written for other versions: the installed parser's keys are used
    stale.write_text(json.dumps({"versions": {"trl": "0.0.1", "transformers": "0.0.1"}, "stages": {"ppo": []}}))
    monkeypatch.setattr(stages, "KEYS_FILE", stale)
    assert check.infer_stage("c.yaml", {"learning_rate": 1e-4, "reward_model_path": "x", "kl_coef": 0.2}) == "ppo"


def test_a_config_that_fits_several_stages_asks_for_stage(tmp_path, capsys):
    config = _config(tmp_path / "c.yaml", learning_rate=1e-4)
    code, _, err = _check([config], capsys)
    assert code == 1 and "cannot tell which stage" in err and "--stage" in err


def test_overwrite_of_an_earlier_run_is_reported_and_the_run_left_alone(tiny_base, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "alignkit_run.json").write_text("{}")
    data = _jsonl(tmp_path / "chat.jsonl", [{"messages": OWL}] * 4)
    config = _config(tmp_path / "sft.yaml", model_name_or_path=tiny_base, dataset_name=data, output_dir=run,
                     overwrite_output_dir=True)
    code, out, _ = _check([config], capsys)
    assert code == 0 and "overwrite_output_dir will delete" in out
    assert (run / "alignkit_run.json").read_text() == "{}"


def test_a_pipeline_whose_stages_have_not_run_is_checked_with_the_base_tokenizer(tiny_base, tmp_path, capsys):
    chat = _jsonl(tmp_path / "chat.jsonl", [{"messages": OWL}] * 4)
    pref = _jsonl(tmp_path / "pref.jsonl", [{"prompt": [OWL[0]], "chosen": [OWL[1]],
                                            "rejected": [{"role": "assistant", "content": "Rocks."}]}] * 4)
    out = tmp_path / "outputs"
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({
        "base_model": str(tiny_base), "output_dir": str(out),
        "stages": {
            "sft": {"recipe": "sft", "model": "base", "args": {"dataset_name": str(chat), "max_length": 64}},
            "reward": {"recipe": "reward", "model": "sft", "args": {"dataset_name": str(pref)}},
            "ppo": {"recipe": "ppo", "model": "sft", "reward_model": "reward", "args": {"dataset_name": str(pref), "use_peft": True}},
        },
    }, sort_keys=False))
    code, printed, err = _check([pipeline], capsys)
    assert code == 0, err
    assert f"{out / 'sft'}: produced by stage 'sft'; its tokenizer comes from {tiny_base}" in printed
    assert "reward_model" in printed and "produced by stage 'reward'" in printed
    assert printed.count("row 1") >= 3  # every stage previewed with the base's tokenizer
    assert not out.exists()


def test_the_shipped_accelerate_presets_on_a_cpu_machine(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    presets = Path(__file__).resolve().parents[2] / "recipes" / "accelerate"
    if not presets.is_dir():
        pytest.skip("recipes/accelerate/ is not there yet")
    for name in ("single_gpu.yaml", "multi_gpu.yaml"):
        assert check.check_accelerate_config(presets / name) == [], name
    for name in ("deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp2.yaml"):
        [problem] = check.check_accelerate_config(presets / name)
        assert "needs CUDA GPUs and this machine has none" in problem


def test_a_pipeline_whose_reward_stage_used_another_tokenizer_is_refused(tiny_base, world, tmp_path, capsys):
    import shutil

    from alignkit.demo.base import make_base

    out = tmp_path / "outputs"
    shutil.copytree(tiny_base, out / "sft")  # finished stages, as `alignkit run` leaves them
    make_base(world, out / "reward", vocab_size=512)  # config and tokenizer are all a check reads
    config = json.loads((out / "reward" / "config.json").read_text())
    config.update(architectures=["LlamaForSequenceClassification"], num_labels=1)  # a reward stage writes a classifier
    (out / "reward" / "config.json").write_text(json.dumps(config))
    for stage in ("sft", "reward"):
        (out / stage / "alignkit_run.json").write_text(json.dumps({"stage": stage}))
    prompts = _jsonl(tmp_path / "prompts.jsonl", [{"prompt": "What does the owl eat?"}] * 4)
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({
        "base_model": str(tiny_base), "output_dir": str(out),
        "stages": {
            "sft": {"recipe": "sft", "model": "base", "args": {"dataset_name": str(prompts)}},
            "reward": {"recipe": "reward", "model": "sft", "args": {"dataset_name": str(prompts)}},
            "ppo": {"recipe": "ppo", "model": "sft", "reward_model": "reward", "args": {"dataset_name": str(prompts)}},
        },
    }, sort_keys=False))
    before = _tree(out)
    code, printed, err = _check([pipeline], capsys)
    assert code == 1
    assert printed.count("holds a finished run: skipped") == 2
    assert f"stage 'ppo': reward_model_path {out / 'reward'} uses another tokenizer than the policy {out / 'sft'}" in err
    assert "1 problem:" in err  # the finished stages' own data are not what the run will use again
    assert _tree(out) == before
    # With --from, the reward stage trains again: its config and data are checked like a new stage's.
    code, printed, err = _check([pipeline, "--from", "reward"], capsys)
    assert code == 1 and printed.count("holds a finished run: skipped") == 1 and "trained again" in printed
    assert "stage 'reward': " in err and "a preference data set needs 'chosen' + 'rejected'" in err


def test_a_mixture_is_checked_reported_and_previewed_data_set_by_data_set(tiny_base, tmp_path, capsys):
    chat = _jsonl(tmp_path / "chat.jsonl", [{"messages": OWL}] * 6)
    more = _jsonl(tmp_path / "more.jsonl", [{"messages": OWL, "source": "x"}] * 4)
    config = _config(tmp_path / "sft.yaml", model_name_or_path=tiny_base, output_dir=tmp_path / "out", max_length=64,
                     datasets=[{"path": str(chat)}, {"path": str(more), "columns": ["messages"]}], test_split_size=2)
    code, out, err = _check([config], capsys)
    assert code == 0, err
    assert f"datasets[0] ({chat}): 6 rows" in out and f"datasets[1] ({more}): 4 rows" in out
    assert "the mixture of 2: 8 train rows, 2 eval rows" in out
    assert f"datasets[1] ({more}): the first rows as the trainer tokenises them" in out
    bad = _jsonl(tmp_path / "bad.jsonl", [{"text": "plain"}])
    config = _config(tmp_path / "sft.yaml", model_name_or_path=tiny_base, output_dir=tmp_path / "out",
                     datasets=[str(chat), {"path": str(bad), "splt": "train"}])
    code, out, err = _check([config], capsys)
    assert code == 1 and f"datasets[1] ({bad}): unknown key 'splt' (did you mean 'split'?)" in out + err
    assert (out + err).count("unknown key 'splt'") == 1  # once: the data check does not repeat the parser


def test_check_of_a_fresh_cai_pipeline_knows_the_ai_labels_are_written_by_ai_feedback(tmp_path, capsys):
    code, printed, err = _check([REPO / "recipes" / "demo" / "cai.yaml", "--output_dir", tmp_path / "cai"], capsys)
    assert code == 0, err
    labels = tmp_path / "cai" / "ai_feedback" / "preference"
    assert printed.count(f"{labels}: written by stage 'ai_feedback', not checked before it runs") == 2  # reward, dpo
