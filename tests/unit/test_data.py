"""Data loading: each stage's formats are recognised and converted, splits are made, and every problem is a short
`DataError` naming the file, the row or line, and what was expected."""

import json
import time
from pathlib import Path

import pytest
from datasets import Dataset

from alignkit.config import ScriptArguments
from alignkit.data import detect_format, load_data, load_raw, prepare
from alignkit.errors import ConfigError, DataError


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def load(path, stage: str, text_field: str = "text", seed: int = 42, **script_args):
    script_args.setdefault("eval_split_size", 0)
    return load_data(ScriptArguments(dataset_name=str(path), **script_args), stage, text_field, seed)


def load_error(path, stage: str, text_field: str = "text", **script_args) -> str:
    """The message of the DataError that loading `path` raises; a user reads it whole, so it is at most 3 lines."""
    with pytest.raises(DataError) as excinfo:
        load(path, stage, text_field, **script_args)
    message = str(excinfo.value)
    assert len(message.splitlines()) <= 3, message
    return message


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


TEXTS = [{"text": f"document {i}"} for i in range(20)]
CHAT = [user("What is 2+2?"), assistant("4.")]


# ------------------------------------------------------------------------------------------ format detection
@pytest.mark.parametrize(
    "columns, stage, text_field, expected",
    [
        (["text"], "pretrain", "text", "text"),
        (["body", "id"], "pretrain", "body", "text"),
        (["messages", "id"], "sft", "text", "messages"),
        (["prompt", "completion"], "sft", "text", "prompt_completion"),
        (["text"], "sft", "text", "text"),
        (["body"], "sft", "body", "text"),
        (["messages", "text"], "sft", "text", "messages"),
        (["instruction", "input", "output"], "sft", "text", "instruction+output"),
        (["question", "answer"], "sft", "text", "answer+question"),
        (["conversations"], "sft", "text", "conversations"),
        (["prompt", "chosen", "rejected"], "preference", "text", "preference"),
        (["chosen", "rejected"], "preference", "text", "preference"),
        (["prompt"], "prompts", "text", "prompt"),
        (["messages"], "prompts", "text", "messages"),
    ],
)
def test_each_stages_formats_are_detected_from_the_columns(columns, stage, text_field, expected):
    assert detect_format(columns, stage, text_field) == expected


@pytest.mark.parametrize(
    "columns, stage, text_field",
    [
        (["content"], "pretrain", "text"),
        (["text"], "pretrain", "body"),  # a custom text field replaces `text`, it does not add to it
        (["prompt"], "sft", "text"),
        (["chosen"], "preference", "text"),
        (["completion"], "prompts", "text"),
    ],
)
def test_columns_that_fit_no_format_of_the_stage_are_rejected_saying_what_is_expected(columns, stage, text_field):
    with pytest.raises(DataError) as excinfo:
        detect_format(columns, stage, text_field)
    assert str(columns) in str(excinfo.value) and f"a {stage} data set needs" in str(excinfo.value)


# ---------------------------------------------------------------------------------------- native formats
def test_pretrain_text_loads_as_a_single_text_column(tmp_path):
    rows = [{"text": "a b c", "source": "web"}, {"text": "d e f", "source": "book"}]
    path = write_jsonl(tmp_path / "docs.jsonl", rows)
    train = load(path, "pretrain")["train"]
    assert train.column_names == ["text"]
    assert train["text"] == ["a b c", "d e f"]


def test_a_custom_text_field_is_used_for_pretrain_and_sft(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"body": "one"}, {"body": "two"}])
    assert load(path, "pretrain", text_field="body")["train"]["body"] == ["one", "two"]
    assert load(path, "sft", text_field="body")["train"].column_names == ["body"]


def test_sft_messages_load_unchanged_and_extra_columns_are_dropped(tmp_path):
    system = {"role": "system", "content": "Be brief."}
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [system, *CHAT], "id": 7}])
    train = load(path, "sft")["train"]
    assert train.column_names == ["messages"]
    assert train[0]["messages"] == [system, *CHAT]


def test_sft_prompt_completion_loads_as_plain_strings(tmp_path):
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "2+2=", "completion": "4", "score": 1.0}])
    train = load(path, "sft")["train"]
    assert sorted(train.column_names) == ["completion", "prompt"]
    assert (train[0]["prompt"], train[0]["completion"]) == ("2+2=", "4")


def test_sft_prompt_completion_loads_as_conversations(tmp_path):
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": [user("2+2?")], "completion": [assistant("4")]}])
    row = load(path, "sft")["train"][0]
    assert row["prompt"] == [user("2+2?")] and row["completion"] == [assistant("4")]


def test_sft_prompt_and_completion_must_both_be_text_or_both_be_turns(tmp_path):
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": [user("2+2?")], "completion": "4"}])
    message = load_error(path, "sft")
    assert f"{path}, row 1" in message and "both be text or both be lists of turns" in message


def test_sft_text_loads_as_raw_text(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "### Q: hi ### A: hello"}])
    assert load(path, "sft")["train"]["text"] == ["### Q: hi ### A: hello"]


def test_preference_pairs_keep_an_explicit_prompt(tmp_path):
    path = write_jsonl(tmp_path / "pref.jsonl", [{"prompt": "2+2?", "chosen": "4", "rejected": "5", "source": "x"}])
    train = load(path, "preference")["train"]
    assert sorted(train.column_names) == ["chosen", "prompt", "rejected"]
    assert train[0] == {"prompt": "2+2?", "chosen": "4", "rejected": "5"}


def test_preference_pairs_keep_a_numeric_margin_for_the_reward_model_and_refuse_another(tmp_path):
    path = write_jsonl(tmp_path / "pref.jsonl", [{"prompt": "2+2?", "chosen": "4", "rejected": "5", "margin": 1.5}])
    assert load(path, "preference")["train"][0]["margin"] == 1.5  # TRL's RewardTrainer adds it to its loss
    bad = write_jsonl(tmp_path / "bad" / "pref.jsonl", [{"prompt": "2+2?", "chosen": "4", "rejected": "5", "margin": "big"}])
    with pytest.raises(DataError, match="every `margin` must be a number"):
        load(bad, "preference")


def test_preference_pairs_with_an_implicit_prompt_are_conversations_sharing_their_start(tmp_path):
    chosen, rejected = [user("2+2?"), assistant("4")], [user("2+2?"), assistant("5")]
    path = write_jsonl(tmp_path / "pref.jsonl", [{"chosen": chosen, "rejected": rejected}])
    train = load(path, "preference")["train"]
    assert sorted(train.column_names) == ["chosen", "rejected"]
    assert train[0] == {"chosen": chosen, "rejected": rejected}


def test_a_preference_answer_without_an_assistant_turn_is_rejected(tmp_path):
    path = write_jsonl(tmp_path / "pref.jsonl", [{"chosen": CHAT, "rejected": [user("2+2?")]}])
    message = load_error(path, "preference")
    assert f"{path}, row 1" in message and "'rejected' has no assistant turn" in message


def test_prompts_load_from_a_prompt_column(tmp_path):
    rows = [{"prompt": "Tell a joke.", "id": 1}, {"prompt": [user("2+2?")], "id": 2}]
    path = write_jsonl(tmp_path / "prompts.jsonl", rows)
    assert load(path, "prompts")["train"].column_names == ["prompt"]


# ------------------------------------------------------------------------------------------- conversions
def test_instruction_input_output_becomes_a_conversational_prompt_and_completion(tmp_path):
    path = write_jsonl(
        tmp_path / "alpaca.jsonl",
        [
            {"instruction": "Translate to French.", "input": "cat", "output": "chat", "source": "x"},
            {"instruction": "Name a colour.", "input": "", "output": "Red.", "source": "y"},
        ],
    )
    train = load(path, "sft")["train"]
    assert sorted(train.column_names) == ["completion", "prompt"]
    assert train[0]["prompt"] == [user("Translate to French.\n\ncat")]  # input after a blank line
    assert train[0]["completion"] == [assistant("chat")]
    assert train[1]["prompt"] == [user("Name a colour.")]  # an empty input adds nothing


def test_instruction_output_without_an_input_column_is_converted_too(tmp_path):
    path = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "Say hi.", "output": "Hi."}])
    row = load(path, "sft")["train"][0]
    assert row == {"prompt": [user("Say hi.")], "completion": [assistant("Hi.")]}


def test_question_answer_becomes_a_conversational_prompt_and_completion(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "2+2?", "answer": "4", "difficulty": "easy"}])
    train = load(path, "sft")["train"]
    assert train.column_names == ["prompt", "completion"]
    assert train[0] == {"prompt": [user("2+2?")], "completion": [assistant("4")]}


def test_sharegpt_conversations_become_messages_with_standard_roles(tmp_path):
    conversations = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "2+2?"},
        {"from": "gpt", "value": "4"},
    ]
    path = write_jsonl(tmp_path / "sharegpt.jsonl", [{"conversations": conversations, "id": "a1"}])
    train = load(path, "sft")["train"]
    assert train.column_names == ["messages"]
    assert train[0]["messages"] == [{"role": "system", "content": "Be brief."}, user("2+2?"), assistant("4")]


def test_a_sharegpt_turn_from_an_unknown_speaker_is_rejected_with_its_row(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}] * 2
    rows.append({"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]})
    path = write_jsonl(tmp_path / "sharegpt.jsonl", rows)
    message = load_error(path, "sft")
    assert f"{path}, row 3" in message and "unknown role 'bot'" in message


# ---------------------------------------------------------------------------------------- shape errors
def test_wrong_columns_name_the_file_the_columns_found_and_what_is_expected(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"foo": "x", "bar": "y"}])
    message = load_error(path, "sft")
    assert str(path) in message
    assert "['bar', 'foo']" in message
    assert "'messages'" in message and "'prompt' + 'completion'" in message


def test_an_empty_cell_in_a_required_column_names_its_row(tmp_path):
    rows = [{"prompt": "a", "completion": "b"}] * 2 + [{"prompt": "c", "completion": ""}]
    path = write_jsonl(tmp_path / "pc.jsonl", rows)
    message = load_error(path, "sft")
    assert f"{path}, row 3" in message and "'completion' is empty" in message


def test_a_missing_value_in_a_required_column_names_its_row(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": "a"}, {"other": "b"}])
    message = load_error(path, "pretrain")
    assert f"{path}, row 2" in message and "'text' is empty" in message


@pytest.mark.parametrize(
    "turns, problem",
    [
        ([{"content": "hi"}, assistant("yo")], "needs 'role' and 'content'"),
        ([{"role": "bot", "content": "hi"}, assistant("yo")], "unknown role 'bot'"),
        ([user("hi"), user("anyone?")], "no assistant turn"),
    ],
    ids=["no-role", "unknown-role", "no-assistant"],
)
def test_a_malformed_messages_turn_is_rejected_with_its_row(tmp_path, turns, problem):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT}, {"messages": turns}])
    message = load_error(path, "sft")
    assert f"{path}, row 2" in message and problem in message


def test_errors_in_a_folders_test_split_name_the_test_file(tmp_path):
    write_jsonl(tmp_path / "data" / "train.jsonl", TEXTS)
    test = write_jsonl(tmp_path / "data" / "test.jsonl", [{"text": "fine"}, {"text": ""}])
    message = load_error(tmp_path / "data", "pretrain")
    assert f"{test}, row 2" in message


def test_zero_rows_is_an_error_naming_the_source():
    with pytest.raises(DataError, match=r"^my-data is empty"):
        prepare(Dataset.from_dict({"text": []}), "pretrain", "my-data")


# ----------------------------------------------------------------------------------------- file errors
def test_a_malformed_jsonl_line_is_reported_with_its_line_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": oops}\n{"text": "d"}\n', encoding="utf-8")
    message = load_error(path, "pretrain")
    assert f"{path}, line 3" in message and "malformed JSON" in message


def test_bytes_that_are_not_utf8_are_reported_with_their_line_number(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": "b"}\n{"text": "caf\xe9"}\n')
    message = load_error(path, "pretrain")
    assert f"{path}, line 3" in message and "UTF-8" in message


def test_non_utf8_text_files_are_reported_with_their_line_number(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"one\ntwo\ncaf\xe9\n")
    message = load_error(path, "pretrain")
    assert f"{path}, line 3" in message and "UTF-8" in message


def test_a_jsonl_line_that_is_a_list_not_an_object_is_reported(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"text": "a"}\n["text", "b"]\n', encoding="utf-8")
    message = load_error(path, "pretrain")
    assert f"{path}, line 2" in message and "must be an object" in message


@pytest.mark.parametrize(
    "name, content", [("empty.jsonl", ""), ("blank.jsonl", "\n\n"), ("empty.csv", ""), ("empty.txt", "")]
)
def test_an_empty_file_is_reported_as_empty(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    message = load_error(path, "pretrain")
    assert message == f"{path} is empty: it has no rows to train on."


def test_a_missing_file_is_named(tmp_path):
    path = tmp_path / "nope.jsonl"
    message = load_error(path, "sft")
    assert "not found" in message and str(path) in message


def test_an_unsupported_file_type_is_named_with_the_supported_ones(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"PK\x03\x04")
    message = load_error(path, "sft")
    assert str(path) in message and "'.xlsx'" in message and ".jsonl" in message


def test_a_folder_without_data_files_is_named(tmp_path):
    (tmp_path / "notes.md").write_text("no data here", encoding="utf-8")
    message = load_error(tmp_path, "sft")
    assert f"{tmp_path} holds no data files" in message


def test_no_dataset_name_asks_for_one():
    with pytest.raises(DataError, match="No data set given"):
        load_raw(None)


def test_a_hub_id_that_cannot_be_reached_offline_fails_fast_naming_the_hub(monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Both libraries read HF_HUB_OFFLINE once, at import: set their copies too, or a run started without the
    # variable retries the network for ~20 s before failing.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    message = load_error("alignkit-tests/no-such-dataset", "sft")
    assert time.monotonic() - start < 10
    assert "'alignkit-tests/no-such-dataset'" in message and "Hugging Face Hub" in message


def test_a_missing_train_split_names_the_splits_there_are(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", TEXTS)
    message = load_error(path, "pretrain", dataset_train_split="training")
    assert str(path) in message and "no 'training' split" in message and "['train']" in message


@pytest.mark.parametrize("size", [3, 0.99])
def test_an_eval_split_size_that_leaves_no_training_rows_is_rejected(tmp_path, size):
    path = write_jsonl(tmp_path / "docs.jsonl", TEXTS[:3])
    message = load_error(path, "pretrain", eval_split_size=size)
    assert str(path) in message and f"eval_split_size={size}" in message and "no training rows" in message


# ---------------------------------------------------------------------------------------------- file types
def test_a_json_file_holding_a_list_of_objects_loads(tmp_path):
    path = tmp_path / "docs.json"
    path.write_text(json.dumps([{"text": "a"}, {"text": "b"}]), encoding="utf-8")
    assert load(path, "pretrain")["train"]["text"] == ["a", "b"]


def test_a_csv_file_loads_and_its_extra_columns_are_dropped(tmp_path):
    path = tmp_path / "pc.csv"
    path.write_text("prompt,completion,notes\nTwo plus two is,four,easy\nThree plus three is,six,\n", encoding="utf-8")
    train = load(path, "sft")["train"]
    assert sorted(train.column_names) == ["completion", "prompt"]
    assert train["completion"] == ["four", "six"]


def test_a_parquet_file_loads(tmp_path):
    path = tmp_path / "qa.parquet"
    Dataset.from_list([{"question": "2+2?", "answer": "4"}, {"question": "3+3?", "answer": "6"}]).to_parquet(str(path))
    train = load(path, "sft")["train"]
    assert train[1] == {"prompt": [user("3+3?")], "completion": [assistant("6")]}


def test_a_txt_file_is_pretraining_text_one_row_per_line(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("The fox is red.\nThe sky is blue.\nGrass is green.\n", encoding="utf-8")
    assert load(path, "pretrain")["train"]["text"] == ["The fox is red.", "The sky is blue.", "Grass is green."]


def test_blank_lines_in_a_txt_file_are_separators_not_empty_rows(tmp_path):
    path = tmp_path / "prose.txt"
    path.write_text("Para one.\n\nPara two.\n  \n", encoding="utf-8")
    assert load(path, "pretrain")["train"]["text"] == ["Para one.", "Para two."]


def test_a_folder_with_train_and_test_files_uses_both_and_keeps_test_separate(tmp_path):
    write_jsonl(tmp_path / "data" / "train.jsonl", TEXTS)
    write_jsonl(tmp_path / "data" / "test.jsonl", [{"text": "held out 1"}, {"text": "held out 2"}])
    splits = load(tmp_path / "data", "pretrain", eval_split_size=0.25)  # a test file wins over eval_split_size
    assert sorted(splits) == ["test", "train"]
    assert splits["train"]["text"] == [r["text"] for r in TEXTS]
    assert splits["test"]["text"] == ["held out 1", "held out 2"]


# -------------------------------------------------------------------------------------------------- splits
def test_eval_split_size_holds_out_a_fraction_deterministically_and_disjointly(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", TEXTS)
    first = load(path, "pretrain", seed=0, eval_split_size=0.25)
    again = load(path, "pretrain", seed=0, eval_split_size=0.25)
    assert (len(first["train"]), len(first["test"])) == (15, 5)
    assert first["test"]["text"] == again["test"]["text"] and first["train"]["text"] == again["train"]["text"]
    assert not set(first["train"]["text"]) & set(first["test"]["text"])
    assert set(first["train"]["text"]) | set(first["test"]["text"]) == {r["text"] for r in TEXTS}
    other_seed = load(path, "pretrain", seed=1, eval_split_size=0.25)
    assert set(other_seed["test"]["text"]) != set(first["test"]["text"])


def test_eval_split_size_zero_gives_no_test_split(tmp_path):
    splits = load(write_jsonl(tmp_path / "docs.jsonl", TEXTS), "pretrain", eval_split_size=0)
    assert list(splits) == ["train"] and len(splits["train"]) == 20


@pytest.mark.parametrize("size", [3, 3.0])
def test_an_eval_split_size_of_one_or_more_is_a_row_count(tmp_path, size):
    splits = load(write_jsonl(tmp_path / "docs.jsonl", TEXTS), "pretrain", eval_split_size=size)
    assert (len(splits["train"]), len(splits["test"])) == (17, 3)


def test_the_default_eval_split_holds_out_at_least_one_row(tmp_path):
    # 5% of 4 rows rounds to 0; one row is still held out so evaluation has something to score.
    splits = load_data(ScriptArguments(dataset_name=str(write_jsonl(tmp_path / "d.jsonl", TEXTS[:4]))), "pretrain")
    assert (len(splits["train"]), len(splits["test"])) == (3, 1)


# ------------------------------------------------------------------------------- conversation turn order
def system(text):
    return {"role": "system", "content": text}


@pytest.mark.parametrize(
    "turns",
    [
        [system("Be brief."), user("2+2?"), assistant("4."), user("And 3+3?"), assistant("6.")],
        [user("2+2?"), assistant("4."), user("Thanks.")],  # a last user turn is allowed: it is not trained on
    ],
    ids=["system-then-alternating", "ends-with-user"],
)
def test_alternating_conversations_with_an_optional_leading_system_message_load(tmp_path, turns):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": turns}])
    assert load(path, "sft")["train"][0]["messages"] == turns


@pytest.mark.parametrize(
    "turns, problem",
    [
        ([assistant("Hello!"), user("2+2?"), assistant("4.")], "turn 1 of 'messages' is an assistant turn before any user turn"),
        ([system("Be brief."), assistant("4.")], "turn 2 of 'messages' is an assistant turn before any user turn"),
        ([user("2+2?"), user("Well?"), assistant("4.")], "turn 2 of 'messages' is a second user turn in a row"),
        ([user("2+2?"), assistant("4."), assistant("Sure.")], "turn 3 of 'messages' is a second assistant turn in a row"),
        ([user("2+2?"), system("Be brief."), assistant("4.")], "turn 2 of 'messages' is a system message; only the first"),
        ([system("a"), system("b"), user("2+2?"), assistant("4.")], "turn 2 of 'messages' is a system message"),
    ],
    ids=["assistant-first", "assistant-after-system", "user-user", "assistant-assistant", "system-in-the-middle", "two-systems"],
)
def test_sft_messages_whose_turns_do_not_alternate_are_rejected_with_their_row_and_turn(tmp_path, turns, problem):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT}, {"messages": turns}])
    message = load_error(path, "sft")
    assert f"{path}, row 2: {problem}" in message
    assert "alternate" in message or "first turn" in message or "starts with a user turn" in message


def test_a_turn_whose_content_is_null_is_rejected_with_its_row_and_turn(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT}, {"messages": [user("2+2?"), {"role": "assistant", "content": None}]}])
    message = load_error(path, "sft")
    assert message == (
        f"{path}, row 2: turn 2 of 'messages' has content None; a turn's content must be text. Fill it in or remove the row."
    )


@pytest.mark.parametrize("content", [42, [{"type": "text", "text": "4."}]], ids=["number", "list"])
def test_a_turn_whose_content_is_not_text_is_rejected_with_its_row_and_turn(content):
    # (one kind of content in every turn, as in a Parquet file or a Hub data set: no mixing for `datasets` to resolve)
    dataset = Dataset.from_list([{"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": content}]}])
    with pytest.raises(DataError) as excinfo:
        prepare(dataset, "sft", "my-data")
    assert str(excinfo.value).startswith(f"my-data, row 1: turn 1 of 'messages' has content {content!r}; a turn's content must be text")


@pytest.mark.parametrize(
    "rows, expected",
    [
        # datasets would parse the other rows' "4." back as 4.0 and blame row 1
        ([{"messages": CHAT}, {"messages": [user("6*7?"), assistant(42)]}], "line 2: 'messages[].content' is a number (42)"),
        ([{"prompt": "a", "completion": "007"}, {"prompt": "b", "completion": "42"}, {"prompt": "c", "completion": 7}],
         "line 3: 'completion' is a number (7)"),
        ([{"prompt": "a", "completion": True}, {"prompt": "b", "completion": "true"}, {"prompt": "c", "completion": "x"}],
         "line 1: 'completion' is true/false (True)"),
    ],
    ids=["number-content", "number-completion", "bool-completion"],
)
def test_a_json_column_mixing_text_and_other_values_names_the_odd_line_instead_of_changing_the_text(tmp_path, rows, expected):
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    message = load_error(path, "sft")
    assert message.startswith(f"{path}, {expected} where most rows have text")
    assert "Write it as text." in message


def test_a_prompt_that_is_text_among_prompts_that_are_turns_is_refused_if_datasets_would_change_it(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Tell a joke."}, {"prompt": [user("2+2?")]}, {"prompt": "42"}])
    message = load_error(path, "prompts")
    assert message.startswith(f"{path}, line 3: 'prompt' is the text '42', which `datasets` reads back as 42")


def test_an_unused_json_column_may_mix_kinds_of_value(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "meta": {"x": 1}}, {"text": "b", "meta": "s"}])
    assert load(path, "pretrain")["train"]["text"] == ["a", "b"]


def test_conversational_prompt_and_completion_are_checked_as_one_conversation(tmp_path):
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": [user("2+2?")], "completion": [user("Well?"), assistant("4.")]}])
    message = load_error(path, "sft")
    assert f"{path}, row 1: turn 1 of 'completion' is a second user turn in a row" in message
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": [system("Be brief.")], "completion": [assistant("4.")]}])
    assert "turn 1 of 'completion' is an assistant turn before any user turn" in load_error(path, "sft")


@pytest.mark.parametrize(
    "row, problem",
    [
        ({"prompt": [user("2+2?")], "chosen": [assistant("4")], "rejected": [user("2+2?"), assistant("5")]},
         "turn 1 of 'rejected' is a second user turn in a row"),
        ({"prompt": [assistant("Hi."), user("2+2?")], "chosen": [assistant("4")], "rejected": [assistant("5")]},
         "turn 1 of 'prompt' is an assistant turn before any user turn"),
        ({"chosen": [user("2+2?"), assistant("4")], "rejected": [assistant("5")]},
         "turn 1 of 'rejected' is an assistant turn before any user turn"),
        ({"prompt": [user("2+2?")], "chosen": [assistant("4")], "rejected": [{"role": "assistant", "content": None}]},
         "turn 1 of 'rejected' has content None"),
        ({"prompt": "2+2?", "chosen": [assistant("4")], "rejected": [assistant("5")]},
         "'prompt', 'chosen', 'rejected' must all be text or all be lists of turns"),
    ],
    ids=["rejected-repeats-user", "prompt-starts-with-assistant", "implicit-prompt-missing", "null-content", "text-prompt"],
)
def test_conversational_preference_pairs_must_alternate_from_prompt_into_each_answer(tmp_path, row, problem):
    good = {"prompt": [user("2+2?")], "chosen": [assistant("4")], "rejected": [assistant("5")]}
    if "prompt" not in row:
        good = {"chosen": [user("2+2?"), assistant("4")], "rejected": [user("2+2?"), assistant("5")]}
    path = write_jsonl(tmp_path / "pref.jsonl", [good, row])
    message = load_error(path, "preference")
    assert f"{path}, row 2: {problem}" in message


@pytest.mark.parametrize(
    "row, problem",
    [
        ({"prompt": [user("2+2?"), assistant("4.")]}, "'prompt' ends with an assistant turn; a prompt ends with the user turn"),
        ({"prompt": [system("Be brief.")]}, "'prompt' ends with a system turn"),
        ({"prompt": [user("2+2?"), user("Well?")]}, "turn 2 of 'prompt' is a second user turn in a row"),
        ({"messages": [assistant("Hi."), user("2+2?"), assistant("4.")]}, "turn 1 of 'messages' is an assistant turn before any"),
        ({"messages": [system("Be brief.")]}, "'messages' has no user turn"),
        ({"messages": [user("2+2?"), {"role": "assistant", "content": None}]}, "turn 2 of 'messages' has content None"),
    ],
    ids=["prompt-ends-with-assistant", "prompt-only-system", "prompt-user-user", "messages-assistant-first",
         "messages-no-user", "messages-null-content"],
)
def test_prompt_conversations_alternate_and_end_with_the_turn_to_answer(tmp_path, row, problem):
    good = {"prompt": [user("3+3?")]} if "prompt" in row else {"messages": [user("3+3?"), assistant("6.")]}
    path = write_jsonl(tmp_path / "prompts.jsonl", [good, row])
    message = load_error(path, "prompts")
    assert f"{path}, row 2: {problem}" in message


def test_prompts_from_alternating_messages_are_the_turns_before_the_last_answer(tmp_path):
    turns = [system("Be brief."), user("2+2?"), assistant("4."), user("3+3?"), assistant("6.")]
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"messages": turns}])
    assert load(path, "prompts")["train"][0]["prompt"] == turns[:4]


@pytest.mark.parametrize(
    "row, problem",
    [
        ({"question": "6*7?", "answer": 42}, "'answer' must be text, got 42"),
        ({"instruction": "Say hi.", "output": None}, "column 'output' is empty"),
        ({"conversations": "human: hi"}, "'conversations' must be a list of {from, value} turns"),
    ],
    ids=["number-answer", "null-output", "sharegpt-string"],
)
def test_columns_a_conversion_reads_must_be_text(tmp_path, row, problem):
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    assert f"{path}, row 1: {problem}" in load_error(path, "sft")


# --------------------------------------------------------------------------- chosen identical to rejected
def test_pairs_whose_chosen_equals_rejected_are_dropped_and_counted(tmp_path, caplog):
    rows = [{"prompt": f"{i}+{i}?", "chosen": str(2 * i), "rejected": str(2 * i + 1)} for i in range(6)]
    rows[1]["rejected"] = rows[1]["chosen"]
    rows[4]["rejected"] = rows[4]["chosen"]
    path = write_jsonl(tmp_path / "pref.jsonl", rows)
    with caplog.at_level("WARNING", logger="alignkit.data"):
        train = load(path, "preference")["train"]
    assert train["prompt"] == ["0+0?", "2+2?", "3+3?", "5+5?"]
    assert f"{path}: 2 of 6 pairs have 'chosen' identical to 'rejected' (rows 2, 5) and were dropped" in caplog.text


def test_conversational_pairs_with_identical_answers_are_dropped_too(tmp_path, caplog):
    same = {"chosen": [user("2+2?"), assistant("4")], "rejected": [user("2+2?"), assistant("4")]}
    differ = {"chosen": [user("2+2?"), assistant("4")], "rejected": [user("2+2?"), assistant("5")]}
    path = write_jsonl(tmp_path / "pref.jsonl", [differ, same, differ])
    with caplog.at_level("WARNING", logger="alignkit.data"):
        assert len(load(path, "preference")["train"]) == 2
    assert "1 of 3 pairs have 'chosen' identical to 'rejected' (row 2)" in caplog.text


def test_pairs_that_differ_are_kept_without_a_warning(tmp_path, caplog):
    path = write_jsonl(tmp_path / "pref.jsonl", [{"prompt": "2+2?", "chosen": "4", "rejected": " 4"}])  # whitespace differs
    with caplog.at_level("WARNING", logger="alignkit.data"):
        assert len(load(path, "preference")["train"]) == 1
    assert "identical" not in caplog.text


def test_a_data_set_where_every_pair_has_chosen_equal_to_rejected_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "pref.jsonl", [{"prompt": "2+2?", "chosen": "4", "rejected": "4"}] * 4)
    message = load_error(path, "preference")
    assert message.startswith(f"{path}: 'chosen' is identical to 'rejected' in all 4 pairs")
    assert "Put the preferred answer in 'chosen'" in message


def test_identical_pairs_are_dropped_before_the_eval_split_is_made(tmp_path):
    rows = [{"prompt": f"{i}?", "chosen": "a", "rejected": "b" if i % 2 else "a"} for i in range(10)]
    splits = load(write_jsonl(tmp_path / "pref.jsonl", rows), "preference", eval_split_size=2)
    assert (len(splits["train"]), len(splits["test"])) == (3, 2)
    assert all(c != r for split in splits.values() for c, r in zip(split["chosen"], split["rejected"]))


# ------------------------------------------------------------------------------------------ CSV cells
def test_csv_cells_that_look_like_numbers_or_missing_values_stay_text_exactly_as_written(tmp_path):
    path = tmp_path / "pc.csv"
    completions = ["42", "3.50", "007", "1e3", "-0", "1,000", "NA", "None", "null", "true", " 12 "]
    lines = ["prompt,completion", *(f'q{i},"{c}"' for i, c in enumerate(completions))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    train = load(path, "sft")["train"]
    assert train["completion"] == completions
    assert train["prompt"] == [f"q{i}" for i in range(len(completions))]


def test_a_csv_column_of_only_numbers_stays_text(tmp_path):
    path = tmp_path / "pretrain.csv"
    path.write_text("text,id\n2024,1\n0.10,2\n", encoding="utf-8")
    train = load(path, "pretrain")["train"]
    assert train["text"] == ["2024", "0.10"]


def test_csv_files_in_a_folder_are_read_as_text_too(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("question,answer\n6*7?,42\n1/2?,0.50\n", encoding="utf-8")
    (tmp_path / "data" / "test.csv").write_text("question,answer\nBond?,007\n", encoding="utf-8")
    splits = load(tmp_path / "data", "sft")
    assert [row[0]["content"] for row in splits["train"]["completion"]] == ["42", "0.50"]
    assert splits["test"][0]["completion"] == [assistant("007")]


def test_an_empty_csv_cell_is_still_reported_as_empty(tmp_path):
    path = tmp_path / "pc.csv"
    path.write_text("prompt,completion\na,b\nc,\n", encoding="utf-8")
    assert f"{path}, row 2: column 'completion' is empty" in load_error(path, "sft")


# ------------------------------------------------------------------------------- CSV rows with extra cells
def test_a_csv_row_with_more_cells_than_the_header_names_the_file_and_line(tmp_path):
    path = tmp_path / "pc.csv"
    # a quoted cell holding a comma and one spanning two lines are one cell each; line 6 has one cell too many
    path.write_text('prompt,completion\na,b\n"c, d",e\n"two\nlines",f\ng,h,i\nj,k\n', encoding="utf-8")
    message = load_error(path, "sft")
    assert message.startswith(f"{path}, line 6: 3 cells, but the header has 2 columns (prompt, completion).")
    assert "Quote a cell that contains a comma" in message


def test_a_csv_whose_rows_all_have_one_cell_too_many_is_refused_not_shifted(tmp_path):
    # pandas would take the first column as the index and shift every value under the wrong header
    path = tmp_path / "pc.csv"
    path.write_text("prompt,completion\nWhat is 2+2?,Four, I think.\nWhat is 3+3?,Six, I think.\n", encoding="utf-8")
    assert load_error(path, "sft").startswith(f"{path}, line 2: 3 cells, but the header has 2 columns")


def test_a_csv_row_with_fewer_cells_and_blank_lines_still_load(tmp_path):
    path = tmp_path / "pc.csv"
    path.write_text("prompt,completion,notes\n\na,b\nc,d,x\n\n", encoding="utf-8")
    assert load(path, "sft")["train"][:] == {"prompt": ["a", "c"], "completion": ["b", "d"]}


# ------------------------------------------------------------------------------------- preference truncation
def test_a_pair_whose_answer_alone_is_longer_than_max_length_is_kept_with_its_answer_end_cut(tiny_base):
    from transformers import AutoTokenizer

    from alignkit.data import truncate_prompts

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    max_length = 96  # the prompt keeps up to its last 24 tokens: all of this one
    answer = " The fox is red." + " The fox lives in the hills." * 40  # far more than 96 tokens on its own
    tokens = lambda text: len(tokenizer(text)["input_ids"]) + 1  # noqa: E731  # + the EOS the reward trainer appends
    assert tokens(answer) > max_length
    prompt = "\n\nHuman: What color is the fox?\n\nAssistant:"
    row = {"chosen": prompt + answer, "rejected": prompt + " Blue."}  # an implicit prompt, as in hh-rlhf

    cut = truncate_prompts(Dataset.from_list([row]), tokenizer, max_length)
    assert len(cut) == 1  # kept, not dropped
    kept = cut[0]
    assert kept["prompt"] == prompt  # short enough to stay whole
    assert kept["rejected"] == " Blue."  # the answer that fits is untouched
    assert answer.startswith(kept["chosen"]) and " The fox is red." in kept["chosen"]  # the long one loses its end
    assert len(kept["chosen"]) < len(answer)
    assert tokens(kept["prompt"] + kept["chosen"]) <= max_length
    assert tokens(kept["prompt"] + kept["chosen"]) >= max_length - 3  # cut no more than needed


def test_a_conversational_pair_whose_answer_alone_is_too_long_keeps_its_last_turn_and_the_answer_start(tiny_base):
    from trl import ModelConfig

    from alignkit.data import truncate_prompts
    from alignkit.models import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=str(tiny_base)))  # with alignkit's default chat template
    length = lambda turns: len(tokenizer.apply_chat_template(turns, tokenize=True, return_dict=False))  # noqa: E731
    prompt = [{"role": "user", "content": "Where does the fox live? " * 10}, {"role": "assistant", "content": "In the hills."},
              {"role": "user", "content": "What color is the fox?"}]
    long_answer = [{"role": "assistant", "content": "The fox is red." + " It lives in the hills." * 40}]
    row = {"prompt": prompt, "chosen": long_answer, "rejected": [{"role": "assistant", "content": "Blue."}]}
    assert length(long_answer) > 96

    kept = truncate_prompts(Dataset.from_list([row]), tokenizer, 96)[0]
    assert kept["prompt"] == prompt[-1:]  # the earlier turns make way first
    assert kept["chosen"][0]["content"].startswith("The fox is red.")
    assert long_answer[0]["content"].startswith(kept["chosen"][0]["content"])
    assert length(kept["prompt"] + kept["chosen"]) <= 96 and kept["rejected"] == row["rejected"]


def test_reward_pairs_are_tokenised_once_exactly_as_trls_reward_trainer_and_only_too_long_ones_are_cut(tiny_base, tmp_path):
    from trl import ModelConfig, RewardConfig

    from alignkit import trl_internals
    from alignkit.data import tokenize_reward_pairs, truncate_prompts
    from alignkit.models import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=str(tiny_base)))
    args = RewardConfig(output_dir=str(tmp_path), max_length=64, use_cpu=True, bf16=False)
    long_prompt = "The fox is red. " * 30 + "What color is the fox?"
    text = Dataset.from_list([
        {"prompt": "What color is the fox?", "chosen": " Red.", "rejected": " Blue, you fool."},
        {"prompt": long_prompt, "chosen": " Red.", "rejected": " Blue."},
    ])
    implicit = Dataset.from_list([  # hh-rlhf's shape: the prompt is the answers' shared start; the long pair first
        {"chosen": long_prompt + " A: Red.", "rejected": long_prompt + " A: Blue."},
        {"chosen": "Q: Which color is the owl? A: Grey.", "rejected": "Q: Which color is the owl? A: Pink!"},
    ])
    turns = lambda role, content: [{"role": role, "content": content}]  # noqa: E731
    chat = Dataset.from_list([
        {"prompt": turns("user", "What color is the fox?"), "chosen": turns("assistant", "Red."), "rejected": turns("assistant", "Blue.")},
        {"prompt": turns("user", long_prompt) + turns("assistant", "Ask.") + turns("user", "And the owl?"),  # whole turns are cut
         "chosen": turns("assistant", "Grey."), "rejected": turns("assistant", "Blue.")},
    ])
    for rows, too_long in ((text, 1), (implicit, 0), (chat, 1)):
        ours = tokenize_reward_pairs(rows, tokenizer, args)
        trls = trl_internals.prepare_reward(rows, tokenizer, args)  # TRL's own, which drops the too-long pair
        kept = [i for i in range(len(rows)) if i != too_long]
        assert [ours[i]["chosen_ids"] for i in kept] == trls["chosen_ids"]
        assert [ours[i]["rejected_ids"] for i in kept] == trls["rejected_ids"]
        # The too-long pair is kept, cut as `truncate_prompts` cuts it, in its place.
        cut = trl_internals.prepare_reward(truncate_prompts(rows.select([too_long]), tokenizer, 64), tokenizer, args)[0]
        assert ours[too_long]["chosen_ids"] == cut["chosen_ids"] and len(cut["chosen_ids"]) <= 64
        assert len(ours) == len(rows)
        # The trainer takes these ids as they are: its own preparation leaves them unchanged.
        assert trl_internals.prepare_reward(ours, tokenizer, args)["chosen_ids"] == ours["chosen_ids"]


# ------------------------------------------------------------------------------------- mixtures (`datasets`)
def mixture(entries, stage: str = "sft", **script_args):
    script_args.setdefault("eval_split_size", 0)
    return load_data(ScriptArguments(datasets=entries, **script_args), stage)


def mixture_error(entries, stage: str = "sft", error=DataError, **script_args) -> str:
    with pytest.raises(error) as excinfo:
        mixture(entries, stage, **script_args)
    message = str(excinfo.value)
    assert len(message.splitlines()) <= 3, message
    return message


def qa(n: int, start: int = 0):
    return [{"prompt": f"q{i}?", "completion": f"a{i}.", "extra": i} for i in range(start, start + n)]


def test_a_mixture_concatenates_local_files_and_folders_each_with_its_split_and_columns(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", qa(3))
    write_jsonl(tmp_path / "b" / "train.jsonl", qa(2, 10))
    write_jsonl(tmp_path / "b" / "test.jsonl", qa(4, 20))
    ds = mixture([{"path": str(a)}, {"path": str(tmp_path / "b"), "split": "test", "columns": ["prompt", "completion"]}])
    assert set(ds) == {"train"} and len(ds["train"]) == 3 + 4 and ds["train"][3]["prompt"] == "q20?"
    # Each data set is converted as `dataset_name` would be: question/answer becomes conversational prompt/completion.
    c = write_jsonl(tmp_path / "c.jsonl", [{"question": "Why?", "answer": "Because."}])
    turns = write_jsonl(tmp_path / "turns.jsonl", [{"prompt": [user("Hi?")], "completion": [assistant("Hello.")]}])
    ds = mixture([str(turns), str(c)])
    assert ds["train"][-1]["completion"] == [assistant("Because.")]
    assert mixture_error([str(a), str(c)]) == (
        f"datasets[1] ({c}) holds 'prompt', 'completion' as lists of turns but datasets[0] ({a}) as text; "
        "a mixture's data sets must write them the same way."
    )
    # A split may be a slice, as `datasets` writes it; a format name takes `data_files` (relative to `data_dir`).
    ds = mixture([{"path": str(a), "split": "train[:2]"}, {"path": "json", "data_dir": str(tmp_path), "data_files": ["b/*.jsonl"]}])
    assert ds["train"]["prompt"] == ["q0?", "q1?"] + [f"q{i}?" for i in range(20, 24)] + ["q10?", "q11?"]


def test_a_mixture_holds_out_test_split_size_or_else_eval_split_size(tmp_path):
    a, b = write_jsonl(tmp_path / "a.jsonl", qa(10)), write_jsonl(tmp_path / "b.jsonl", qa(10, 10))
    entries = [{"path": str(a)}, {"path": str(b)}]
    assert (len(mixture(entries, test_split_size=4)["test"]), len(mixture(entries, eval_split_size=0.1)["test"])) == (4, 2)
    assert "test_split_size=20 leaves no training rows" in mixture_error(entries, test_split_size=20)
    with pytest.raises(ConfigError, match="`test_split_size` splits a `datasets` mixture"):
        ScriptArguments(dataset_name=str(a), test_split_size=0.1)


def test_fractions_share_the_mixture_without_repeating_rows_as_trl_does(tmp_path):
    a, b = write_jsonl(tmp_path / "a.jsonl", qa(10)), write_jsonl(tmp_path / "b.jsonl", qa(4, 10))
    ds = mixture([{"path": str(a), "fraction": 0.5}, {"path": str(b), "fraction": 0.5}])["train"]
    assert ds["prompt"] == [f"q{i}?" for i in range(4)] + [f"q{i}?" for i in range(10, 14)]  # b (4 rows) limits it to 8
    with pytest.raises(ConfigError, match="set it for every entry or for none"):
        ScriptArguments(datasets=[{"path": str(a), "fraction": 0.5}, {"path": str(b)}])


def test_every_problem_of_a_mixture_names_the_entry_and_its_path(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", qa(2))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q?", "completion": "a."}, {"prompt": "q?", "completion": ""}])
    assert mixture_error([str(a), str(bad)]) == (
        f"datasets[1] ({bad}), row 2: column 'completion' is empty. Fill it in or remove the row."
    )
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "q?", "completion": "a."}\n{"prompt": \n', encoding="utf-8")
    assert mixture_error([str(a), str(broken)]).startswith(f"datasets[1] ({broken}), line 2: malformed JSON")
    assert mixture_error([str(a), str(tmp_path / "none.jsonl")]) == (
        f"datasets[1] ({tmp_path / 'none.jsonl'}): Data file or folder not found: {tmp_path / 'none.jsonl'}"
    )
    assert mixture_error([str(a), {"path": str(a), "split": "test"}]) == (
        f"datasets[1] ({a}) has no split 'test' (it has ['train']); set its `split`."
    )
    assert mixture_error([{"path": str(a), "columns": ["prompt", "answer"]}]) == (
        f"datasets[0] ({a}): no column 'answer' (it has ['prompt', 'completion', 'extra']); fix `columns`."
    )
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "Just text."}])
    message = mixture_error([str(a), str(text)])
    assert message.startswith(f"datasets[1] ({text}) has columns ['text'] (text) but datasets[0] ({a}) has columns")
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"query": "q?"}])
    assert mixture_error([str(a), str(wrong)], stage="prompts").startswith(f"datasets[1] ({wrong}) has columns ['query']")


def test_a_mixture_entry_with_an_unknown_key_or_a_bad_value_is_a_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"datasets\[0\] \(a.jsonl\): unknown key 'pth' \(did you mean 'path'\?\)"):
        ScriptArguments(datasets=[{"path": "a.jsonl", "pth": "b"}])
    with pytest.raises(ConfigError, match=r"datasets\[1\]: `path` is missing"):
        ScriptArguments(datasets=["a.jsonl", {"split": "train"}])
    with pytest.raises(ConfigError, match=r"datasets\[0\] \(a.jsonl\): `columns` must be a list of column names"):
        ScriptArguments(datasets=[{"path": "a.jsonl", "columns": "prompt"}])
    with pytest.raises(ConfigError, match="both `dataset_name` and `datasets` are set"):
        ScriptArguments(dataset_name="a.jsonl", datasets=["b.jsonl"])
    with pytest.raises(ConfigError, match="`streaming` is not supported"):
        ScriptArguments(datasets=["a.jsonl"], streaming=True)


def test_a_mixture_from_yaml_and_the_command_line_goes_through_the_strict_parser(tmp_path):
    from alignkit.config import STAGE_ARGS, parse_args

    a, b = write_jsonl(tmp_path / "a.jsonl", qa(3)), write_jsonl(tmp_path / "b.jsonl", qa(2, 10))
    config = tmp_path / "sft.yaml"
    config.write_text(
        f"datasets: [{{path: {a}}}, {{path: {b}, split: train, columns: [prompt, completion]}}]\n"
        f"test_split_size: 1\noutput_dir: {tmp_path / 'out'}\nmodel_name_or_path: m\n", encoding="utf-8"
    )
    script_args, _, _ = parse_args(STAGE_ARGS["sft"], ["--config", str(config)])
    assert [s.path for s in script_args.datasets] == [str(a), str(b)] and script_args.datasets[1].columns == ["prompt", "completion"]
    ds = load_data(script_args, "sft")
    assert len(ds["train"]) == 4 and len(ds["test"]) == 1
    script_args, _, _ = parse_args(STAGE_ARGS["sft"], ["--config", str(config), "--datasets", str(b), str(a)])
    assert [s.path for s in script_args.datasets] == [str(b), str(a)]
    config.write_text(f"datasets: [{{path: {a}, splt: train}}]\noutput_dir: {tmp_path / 'out'}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"sft.yaml: datasets\[0\] \(.*a.jsonl\): unknown key 'splt' \(did you mean 'split'\?\)"):
        parse_args(STAGE_ARGS["sft"], ["--config", str(config)])
