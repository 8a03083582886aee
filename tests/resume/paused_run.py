"""
Run `alignkit <stage> ...` exactly as the command does (`alignkit.cli.main`), in a process that pauses at one chosen
point so that a test can act while it is there: start a second run on the same folder, or kill this one. The pause is
patched in by this test helper, never by the library.

    python tests/resume/paused_run.py <point> <signal_dir> <stage> [args ...]

point
    step:<n>  after optimiser step n (before that step's checkpoint, if it saves one), touch <signal_dir>/paused and
              wait for <signal_dir>/go
    marker    with everything written but `alignkit_run.json`, as it is about to be put in place (the atomic rename
              that marks the run finished), touch <signal_dir>/paused and wait for <signal_dir>/go
"""

import os
import sys
import time
from pathlib import Path


def pause(signal_dir: Path) -> None:
    (signal_dir / "paused").touch()
    while not (signal_dir / "go").exists():
        time.sleep(0.02)


def main() -> None:
    point, signal_dir, argv = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    if point.startswith("step:"):
        from alignkit import training

        step, original = int(point.split(":", 1)[1]), training.StopOnNonFinite.on_step_end

        def on_step_end(self, args, state, control, **kwargs):
            original(self, args, state, control, **kwargs)
            if state.global_step == step:
                pause(signal_dir)

        training.StopOnNonFinite.on_step_end = on_step_end
    elif point == "marker":
        from alignkit import outputs

        replace = os.replace

        def replace_pausing_before_the_marker(src, dst, *args, **kwargs):
            if Path(dst).name == outputs.RUN_FILE_NAME:
                pause(signal_dir)
            return replace(src, dst, *args, **kwargs)

        os.replace = replace_pausing_before_the_marker
    else:
        raise SystemExit(f"unknown pause point {point!r}")

    from alignkit.cli import main as alignkit_main

    alignkit_main(argv)


if __name__ == "__main__":
    main()
