"""`alignkit check`: validate a stage config or a pipeline without training, listing every problem at once.

The parts: `stage` (one stage config), `pipeline` (a pipeline file, stage by stage), `preview` (the first rows as the
trainer tokenises them), `findings` (what a check found), `cli` (the command and its usage).
"""

from alignkit.check.cli import main, run_check
from alignkit.check.findings import Report
from alignkit.check.stage import check_accelerate_config, check_stage, infer_stage

__all__ = ["Report", "check_accelerate_config", "check_stage", "infer_stage", "main", "run_check"]
