"""TRL's fused LM head on CPU: score only the positions that carry a label, as on GPUs.

TRL's SFT and DPO trainers replace the model's forward with `trl.trainer.utils.add_fused_lm_head`,
which computes per-token log-probabilities tile by tile instead of materialising the
[tokens, vocab] logits. On Triton devices (CUDA, XPU) it scores only the positions whose label is
not -100. Elsewhere it scores every position, because on Neuron a varying number of positions
would recompile the graph. Eager CPU has no such cost, and the choice matters here.

A row of ours is a long prompt (the dialogue context) and a short answer. With a 49k vocabulary,
most of the head's work, forward and backward, goes into prompt positions whose loss is masked
anyway. Scoring only the labelled positions on CPU gives the same losses and gradients
(tests/training/test_lm_head.py) and about twice the steady-state DPO steps per second of the
CPU demo (`esevo bench train --compare lm-head`, BENCHMARKS.md).

TRL reads the choice from the module global `_use_triton` at call time, and nothing else in that
module reads it, so wrapping that one name is the whole change. The test would catch a TRL
release that changes this.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

_MARK = "_esevo_scores_labelled_cpu"
_every_position = False  # True inside `every_position()`: TRL's own choice, for benchmarks


def score_labelled_positions_only() -> bool:
    """Make TRL's fused LM head skip unlabelled positions on CPU too. Idempotent.

    Returns False (and logs why) where the installed TRL has no such switch; training is then
    correct, only slower on CPU.
    """
    import trl.trainer.utils as trl_utils

    compact_on = getattr(trl_utils, "_use_triton", None)
    if compact_on is None or not hasattr(trl_utils, "add_fused_lm_head"):
        logger.info("TRL has no fused LM head switch here; CPU training scores every position")
        return False
    if getattr(compact_on, _MARK, False):
        return True

    def compact(device) -> bool:
        return (device.type == "cpu" and not _every_position) or compact_on(device)

    setattr(compact, _MARK, True)
    trl_utils._use_triton = compact
    return True


@contextmanager
def every_position() -> Iterator[None]:
    """TRL's own choice while inside: every position scored on CPU (`esevo bench train`'s
    baseline for this switch)."""
    global _every_position
    before, _every_position = _every_position, True
    try:
        yield
    finally:
        _every_position = before
