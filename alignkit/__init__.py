"""alignkit: declarative LLM post-training recipes on TRL, PEFT and Accelerate."""

import logging
import warnings

__version__ = "0.1.0"

# bitsandbytes (imported by transformers when installed) warns at import that an optional CPU kernel package is
# missing; it falls back to its own kernels, so the warning only alarms users.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# With `kernels` installed (transformers >= 5.25 depends on it), bitsandbytes looks for that CPU kernel on the Hub, and
# offline (HF_HUB_OFFLINE=1, as every test and the demo run) `kernels` warns that it skips the publisher check, ahead
# of whatever the run prints; the kernel itself is not used (above).
logging.getLogger("kernels._internals.hf_hub").addFilter(lambda record: "Skipping publisher trust check" not in record.getMessage())
# DeepSpeed, when installed, is imported by Accelerate in every run, and on a machine without a GPU it warns that it
# fell back to the CPU: noise about a library the run does not use. Its other messages stay.
logging.getLogger("DeepSpeed").addFilter(lambda record: "Setting accelerator to CPU" not in record.getMessage())

# TRL 1.16 and PEFT still read `model.is_gradient_checkpointing`, which transformers 5 deprecates at every access:
# a FutureWarning per stage about code that is not the user's.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
