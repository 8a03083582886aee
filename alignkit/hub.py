"""Push a stage's output to the Hugging Face Hub.

    alignkit push <folder> <repo_id> [--public]         upload a finished stage output (private unless --public)

A stage with `push_to_hub: true` pushes its output once it is saved (`training.train_and_save`), from the main
process only, to `hub_model_id` (default: the output folder's name in your namespace), private unless
`hub_private_repo: false`. The Trainer's own push is turned off (`take_hub_settings`): it fails at init when
offline and uploads its own model card and every checkpoint.

A push uploads exactly what a user needs to load and understand the model (`PUSH_PATTERNS`): the weights (a PEFT
adapter, or a full model's safetensors and config), the tokenizer with its chat template, the model card
(`README.md`), and alignkit's record of the run (`alignkit_config.yaml`, `alignkit_run.json`). Never pushed:
checkpoints and optimizer states, `training_args.bin` (a pickle), `trainer_state.json`/`all_results.json` (logs;
the metrics are in `alignkit_run.json`), and subfolders such as DPO's frozen `ref/` adapter or PPO's `value/` model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.constants import is_offline_mode
from huggingface_hub.errors import HfHubHTTPError, HTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import filter_repo_objects

from alignkit.errors import AlignkitError, ConfigError
from alignkit.outputs import RUN_FILE_NAME

# What a push uploads, as `upload_folder` allow_patterns. No pattern starts with a wildcard: in these patterns `*`
# also matches "/", so "*.safetensors" would upload DPO's `ref/` adapter and every checkpoint too.
PUSH_PATTERNS = (
    # weights: a PEFT adapter, or a full model (one file, or shards with their index) and its config
    "adapter_model.safetensors", "adapter_config.json",
    "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
    "config.json", "generation_config.json",
    # the tokenizer, whichever files its kind saves, and the chat template
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.model",
    "vocab.json", "merges.txt", "vocab.txt", "spiece.model",
    "chat_template.jinja", "chat_template.json", "additional_chat_templates/*.jinja",
    # the model card and alignkit's record of how the model was made
    "README.md", "alignkit_config.yaml", "alignkit_run.json",
)
WEIGHT_PATTERNS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")
LOGIN_HINT = "log in with `hf auth login` or set HF_TOKEN to a token with write access"

# `hub_token`s from stage configs, by output folder. They are kept out of the config objects because the Trainer
# pickles those into training_args.bin (and every checkpoint), which would put the token on disk.
_TOKENS: dict[str, str] = {}


class HubError(AlignkitError):
    pass


def _key(folder: str | Path) -> str:
    return str(Path(folder).resolve())


def take_hub_settings(args) -> None:
    """
    Called on every parsed config (`config.parse_args`). With `push_to_hub`, check now that a push can work (not
    offline, a token exists) so the run fails before training rather than after, and hand the push from the Trainer
    to alignkit: `push_to_hub` is turned off and the request kept as `alignkit_push_to_hub`. `hub_token` moves out
    of the config (see `_TOKENS`); `hub_model_id` and `hub_private_repo` stay and are read after the run.
    """
    token = getattr(args, "hub_token", None)
    if token:
        _TOKENS[_key(args.output_dir)] = token
        args.hub_token = None
    if getattr(args, "push_to_hub", False):
        _check_can_push(token, in_config=True)
        args.push_to_hub, args.alignkit_push_to_hub = False, True


def config_token(output_dir: str | Path) -> str | None:
    """The `hub_token` a stage config gave for the run in `output_dir` (see `take_hub_settings`)."""
    return _TOKENS.get(_key(output_dir))


def _check_can_push(token: str | None, in_config: bool = False) -> None:
    """Fail in a line, without a request, when a push cannot work: offline mode, or no token anywhere."""
    if is_offline_mode():
        if in_config:
            raise HubError("push_to_hub is set, but HF_HUB_OFFLINE=1 keeps alignkit off the Hub: unset it, or drop "
                           "push_to_hub and upload the output later with `alignkit push <output_dir> <repo_id>`.")
        raise HubError("Cannot push: HF_HUB_OFFLINE=1 keeps alignkit off the Hub; unset it to push.")
    if not (token or get_token()):
        where = "push_to_hub is set, but no" if in_config else "No"
        raise HubError(f"{where} Hub token was found: {LOGIN_HINT}.")


def files_to_push(folder: str | Path) -> list[str]:
    """The files of `folder` (relative paths) that a push uploads, chosen as `upload_folder` chooses them."""
    folder = Path(folder)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return list(filter_repo_objects(files, allow_patterns=list(PUSH_PATTERNS)))


def _status(error: Exception) -> int | None:
    return getattr(getattr(error, "response", None), "status_code", None)


def _transient(error: Exception) -> bool:
    """Worth another try: a server error, rate limiting, or a network failure (never offline mode, never 4xx)."""
    if isinstance(error, OfflineModeIsEnabled):
        return False
    if isinstance(error, HfHubHTTPError):
        status = _status(error) or 0
        return status >= 500 or status in (408, 429)
    return isinstance(error, (HTTPError, ConnectionError, TimeoutError))


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _with_retries(action, what: str, retries: int, backoff: float):
    for attempt in range(retries):
        try:
            return action()
        except Exception as e:
            if not _transient(e) or attempt == retries - 1:
                raise
            delay = backoff * 2**attempt
            print(f"alignkit: {what} failed ({_first_line(e)}); retrying in {delay:g} s", flush=True)
            time.sleep(delay)


def _hub_error(error: Exception, folder: Path, repo_id: str, retries: int) -> HubError:
    again = f"The output is safe in {folder}; upload it later with `alignkit push {folder} {repo_id}`."
    if isinstance(error, OfflineModeIsEnabled):
        return HubError(f"Cannot push to {repo_id}: HF_HUB_OFFLINE=1 is set; unset it. {again}")
    status = _status(error)
    if status in (401, 403):
        return HubError(f"Not authorised to write to {repo_id} (HTTP {status}): {LOGIN_HINT}.")
    if isinstance(error, HfHubHTTPError):
        return HubError(f"Push to {repo_id} failed (HTTP {status}): {_first_line(error)}. {again}")
    if _transient(error):
        return HubError(f"Could not reach the Hub after {retries} tries ({_first_line(error)}). {again}")
    return HubError(f"Push to {repo_id} failed: {_first_line(error)}")  # a bad repo id, invalid card metadata


def _write_card(folder: Path, repo_id: str) -> None:
    from alignkit.modelcard import write_model_card  # imported here: it imports the ML stack

    write_model_card(folder, repo_id=repo_id)


def push_output(
    folder: str | Path,
    repo_id: str,
    private: bool = True,
    token: str | None = None,
    commit_message: str | None = None,
    api: HfApi | None = None,
    retries: int = 3,
    backoff: float = 2.0,
) -> str | None:
    """
    Upload a finished stage output to the Hub repository `repo_id` (created if needed, `private` unless told
    otherwise; an existing repo keeps its visibility) and return its URL. Only `files_to_push(folder)` go up; a
    missing model card is written first. Server and network errors are retried `retries` times with exponential
    backoff; offline mode, a missing token and 4xx answers fail at once with a one-line `HubError`. On processes
    other than the main one this does nothing and returns None.
    """
    folder = Path(folder)
    record = folder / RUN_FILE_NAME
    if not record.is_file():
        raise HubError(
            f"{folder} holds no finished alignkit run ({RUN_FILE_NAME} is missing); push a stage's output_dir once "
            "its run has finished."
        )
    if not any(p in files_to_push(folder) for p in WEIGHT_PATTERNS):
        raise HubError(f"{folder} holds no model weights (adapter_model.safetensors or model.safetensors) to push.")
    _check_can_push(token)

    from accelerate import PartialState  # imported here: the checks above fail fast without it

    if not PartialState().is_main_process:
        return None
    if not (folder / "README.md").is_file():
        _write_card(folder, repo_id)
    stage = json.loads(record.read_text(encoding="utf-8")).get("stage", "stage")
    api = api or HfApi()
    try:
        url = _with_retries(
            lambda: api.create_repo(repo_id, token=token, private=private, exist_ok=True), "creating the repo", retries, backoff
        )
        _with_retries(
            lambda: api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                allow_patterns=list(PUSH_PATTERNS),
                commit_message=commit_message or f"alignkit: upload the {stage} output",
                token=token,
            ),
            "uploading",
            retries,
            backoff,
        )
    except Exception as e:
        if isinstance(e, (HTTPError, OSError, ValueError)):  # network, HTTP, bad repo id or card metadata
            raise _hub_error(e, folder, repo_id, retries) from None
        raise
    url = str(getattr(url, "url", None) or f"{api.endpoint}/{repo_id}")
    print(f"alignkit: pushed {len(files_to_push(folder))} files of {folder} to {url} ({'private' if private else 'public'})")
    return url


def push_run(training_args) -> str | None:
    """After a stage saved its output: push it when the config asked for `push_to_hub` (see `take_hub_settings`)."""
    if not getattr(training_args, "alignkit_push_to_hub", False):
        return None
    folder = Path(training_args.output_dir)
    repo_id = training_args.hub_model_id or folder.resolve().name
    _write_card(folder, repo_id)  # the card alignkit just wrote, now with code that loads from the repo
    return push_output(folder, repo_id, private=training_args.hub_private_repo is not False, token=config_token(folder))


def push_main(argv: list[str] | None = None) -> str | None:
    """`alignkit push <folder> <repo_id> [--public]`"""
    parser = argparse.ArgumentParser(prog="alignkit push", description="Upload a finished stage output to the Hub.")
    parser.add_argument("folder", help="a stage's output_dir (or a merged model) holding alignkit_run.json")
    parser.add_argument("repo_id", help="the Hub repository, `user/name` or `org/name`")
    parser.add_argument("--public", action="store_true", help="create the repository public (default: private)")
    parser.add_argument("--token", help="a Hub token (default: HF_TOKEN or `hf auth login`); prefer those, "
                        "a token on the command line stays in the shell history")
    parser.add_argument("--commit_message", help="the Hub commit message")
    args = parser.parse_args(argv)
    if not Path(args.folder).is_dir():
        raise ConfigError(f"{args.folder} is not a folder; give a stage's output_dir.")
    return push_output(args.folder, args.repo_id, private=not args.public, token=args.token, commit_message=args.commit_message)
