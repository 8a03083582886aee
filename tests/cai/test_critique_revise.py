"""The critique_revise recipe on a tiny model: the turns it asks, in the model's chat template, and what SFT learns."""

import json

import pytest
from conftest import FAST, run_stage, write_jsonl

from alignkit.errors import ConfigError

CONSTITUTION = """\
principles:
  - id: polite
    critique: Was that rude?
    revision: Say it politely.
    comparison: Which is more polite?
  - id: honest
    critique: Was that true?
    revision: Say only what is true.
    comparison: Which is truer?
examples:
  - principle: polite
    prompt: Is the sky blue?
    answer: Duh.
    critique: It says duh.
    revision: Yes it is.
"""


@pytest.fixture(scope="module")
def cai_run(tiny_base, tmp_path_factory):
    import transformers

    tmp = tmp_path_factory.mktemp("critique_revise")
    constitution = tmp / "constitution.yaml"
    constitution.write_text(CONSTITUTION)
    prompts = write_jsonl(tmp / "prompts.jsonl", [{"prompt": [{"role": "user", "content": q}]}
                                                  for q in ("What color is the fox?", "Where does the owl live?")])
    seen = []  # every prompt the model is asked to continue, as token ids
    original = transformers.GenerationMixin.generate

    def spy(self, input_ids=None, **kwargs):
        seen.append(input_ids[0].tolist())
        return original(self, input_ids=input_ids, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transformers.GenerationMixin, "generate", spy)
        trainer = run_stage(
            "critique_revise", "--model_name_or_path", str(tiny_base), "--dataset_name", str(prompts),
            "--output_dir", str(tmp / "out"), "--constitution", str(constitution), "--num_revisions", "2",
            "--generation_batch_size", "1", "--max_new_tokens", "6", "--do_sample", "true", "--eval_split_size", "0",
            "--max_steps", "2", *FAST,
        )
    records = [json.loads(line) for line in (tmp / "out" / "critique_revise.jsonl").read_text().splitlines()]
    return trainer, records, seen, tmp / "out"


def test_each_critique_and_revision_request_is_rendered_with_the_models_chat_template(cai_run):
    trainer, records, seen, _ = cai_run
    tokenizer = trainer.processing_class
    user = lambda text: {"role": "user", "content": text}
    bot = lambda text: {"role": "assistant", "content": text}
    few_shot = [user("Is the sky blue?"), bot("Duh."), user("Was that rude?"), bot("It says duh."),
                user("Say it politely."), bot("Yes it is.")]
    requests = {"polite": ("Was that rude?", "Say it politely."), "honest": ("Was that true?", "Say only what is true.")}
    expected = [r["prompt"] for r in records]  # the first answers: the prompt alone
    conversations = [[*r["prompt"], bot(r["initial_answer"])] for r in records]
    for round_ in range(2):
        critiques, revisions = [], []
        for record, conversation in zip(records, conversations):
            critique, revision = requests[record["principles"][round_]]
            critiques.append(few_shot + conversation + [user(critique)])
            revisions.append(critiques[-1] + [bot(record["critiques"][round_]), user(revision)])
            conversation[:] = revisions[-1][len(few_shot):] + [bot(record["revisions"][round_])]
        expected += critiques + revisions
    assert len(seen) == len(expected) == 2 + 2 * 2 * 2
    for ids, turns in zip(seen, expected):
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_sft_learns_the_final_revision_as_the_answer_to_the_prompt(cai_run):
    trainer, records, _, out = cai_run
    tokenizer = trainer.processing_class
    assert all(r["revision"] == r["revisions"][-1] and len(r["critiques"]) == 2 for r in records)
    trained = trainer.train_dataset
    assert len(trained) == sum(1 for r in records if r["revision"])
    targets = {tokenizer.decode([t for t in row["labels"] if t != -100]) for row in trained}  # what the loss sees
    assert targets == {r["revision"] + tokenizer.eos_token for r in records if r["revision"]}
    run = json.loads((out / "alignkit_run.json").read_text())
    assert run["stage"] == "critique_revise" and run["critique_revise"]["prompts"] == 2


def test_a_bad_constitution_or_round_count_is_refused_before_any_model_loads(tiny_base, tmp_path):
    from alignkit.config import STAGE_ARGS, parse_args

    args = ["--model_name_or_path", str(tiny_base), "--dataset_name", "x.jsonl", "--output_dir", str(tmp_path / "o")]
    with pytest.raises(ConfigError, match="num_revisions` must be at least 1"):
        parse_args(STAGE_ARGS["critique_revise"], [*args, "--num_revisions", "0"])
    (tmp_path / "c.yaml").write_text("principles: []\n")
    with pytest.raises(ConfigError, match="no principles"):
        parse_args(STAGE_ARGS["critique_revise"], [*args, "--constitution", str(tmp_path / "c.yaml")])
    with pytest.raises(ConfigError, match=r"`principles` names 'kind', which .*default.yaml does not hold; use some of "
                                          "harmless, honest, polite"):
        parse_args(STAGE_ARGS["critique_revise"], [*args, "--principles", "polite", "kind"])


def test_a_resumed_run_trains_on_the_revisions_its_checkpoint_kept_without_generating_again(tiny_base, tmp_path):
    import transformers

    constitution = tmp_path / "constitution.yaml"
    constitution.write_text(CONSTITUTION)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": [{"role": "user", "content": q}]}
                                                       for q in ("What color is the fox?", "Where does the owl live?")])
    out = tmp_path / "out"
    args = ["--model_name_or_path", str(tiny_base), "--dataset_name", str(prompts), "--output_dir", str(out),
            "--constitution", str(constitution), "--max_new_tokens", "6", "--do_sample", "true", "--eval_split_size", "0",
            "--generation_batch_size", "1", "--max_steps", "2", *FAST, "--save_strategy", "steps", "--save_steps", "1"]
    run_stage("critique_revise", *args)
    kept = out / "checkpoint-1" / "critique_revise.jsonl"
    rows = [{**json.loads(line), "revision": "Kept revision."} for line in kept.read_text().splitlines()]
    kept.write_text("".join(json.dumps(r) + "\n" for r in rows))  # what the resumed run must train on

    def no_generation(*_, **__):
        raise AssertionError("a resumed run generated its revisions again")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transformers.GenerationMixin, "generate", no_generation)
        trainer = run_stage("critique_revise", *args, "--resume_from_checkpoint", str(out / "checkpoint-1"))
    final = [json.loads(line) for line in (out / "critique_revise.jsonl").read_text().splitlines()]
    assert [r["revision"] for r in final] == ["Kept revision."] * 2
    targets = {trainer.processing_class.decode([t for t in row["labels"] if t != -100]) for row in trainer.train_dataset}
    assert targets == {"Kept revision." + trainer.processing_class.eos_token}
