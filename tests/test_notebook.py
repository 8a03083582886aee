"""notebooks/quickstart.ipynb runs from top to bottom (in a fresh folder, on this Python) without a cell failing."""

import json
import re
import sys
import time

import pytest
from conftest import REPO

NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"
STAGES = ("pretrain", "sft", "reward", "dpo", "ppo")


def run_notebook(tmp_path, monkeypatch, scale: float | None = None):
    """Execute the notebook in `tmp_path` (optionally with its `SCALE` replaced); returns it with its outputs."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")

    # A kernel spec for this very interpreter, in a folder of its own: the `python3` spec a machine may have
    # points at whatever `python` is first on PATH, which need not have alignkit installed.
    spec = tmp_path / "jupyter" / "kernels" / "alignkit-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "alignkit test", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows figures as PNG outputs

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    if scale is not None:  # as papermill would set a parameter
        cell = next(c for c in notebook.cells if re.search(r"^SCALE = ", c.source, re.M))
        cell.source = re.sub(r"^SCALE = [0-9.]+", f"SCALE = {scale}", cell.source, flags=re.M)
    client = nbclient.NotebookClient(
        notebook, kernel_name="alignkit-test", timeout=600, resources={"metadata": {"path": str(tmp_path)}}
    )
    start = time.time()
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    print(f"notebook ran in {time.time() - start:.0f} s")
    return notebook


def printed(notebook) -> str:
    return "".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs)


def test_the_notebook_is_stored_without_outputs():
    notebook = json.loads(NOTEBOOK.read_text())
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code and all(not cell["outputs"] and cell["execution_count"] is None for cell in code)
    assert any(re.search(r"^SCALE = [0-9.]+", "".join(cell["source"]), re.M) for cell in code)


def test_every_cell_runs_with_short_training(tmp_path, monkeypatch):
    notebook = run_notebook(tmp_path, monkeypatch, scale=0.1)
    assert "held-out perplexity" in printed(notebook) and "--- ppo against sft" in printed(notebook)
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert sum("image/png" in out.get("data", {}) for out in outputs) >= 1 + len(STAGES)  # curves + report figures
    out = tmp_path / "outputs" / "quickstart"
    for stage in STAGES:
        assert (out / stage / "alignkit_run.json").is_file() and (out / stage / "README.md").is_file(), stage
    assert set(json.loads((out / "report.json").read_text())["stages"]) == set(STAGES)


@pytest.mark.slow
def test_at_its_own_length_the_notebook_shows_each_stage_doing_its_job(tmp_path, monkeypatch):
    run_notebook(tmp_path, monkeypatch)
    report = json.loads((tmp_path / "outputs" / "quickstart" / "report.json").read_text())["stages"]
    assert report["pretrain"]["perplexity_after"] < report["pretrain"]["perplexity_before"] / 10
    assert report["reward"]["eval_accuracy"] > 0.9
    for stage in ("dpo", "ppo"):  # the preference stages make the SFT model's answers more polite
        assert report[stage]["gold_politeness"] > report["sft"]["gold_politeness"] + 0.2, stage
        assert report[stage]["rm_win_rate_vs_sft"] > 0.5, stage
