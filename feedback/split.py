"""A stable train/eval split: the hash of a conversation's prompt decides, never a random draw.

The prompt (every user and assistant turn before the final answer, normalised; the system prompt left
out, as its policy may change) maps to a number in [0, 1). Below `eval_fraction` it is eval. The same
question therefore lands in the same split in every version, with any answer: an improved answer in a
later version cannot leak a held-out question into training.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np

from feedback.dedup import normalise_text
from feedback.examples import Messages


def split_fraction(messages: Messages) -> float:
    prompt = [[m["role"], normalise_text(m["content"])] for m in messages[:-1] if m["role"] != "system"]
    digest = hashlib.sha256(json.dumps(prompt, ensure_ascii=False).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def eval_positions(fractions: Sequence[float], eval_fraction: float, min_eval: int) -> np.ndarray:
    """Boolean mask of the examples that go to eval.

    Those below `eval_fraction`, topped up to `min_eval` (but never more than half of the examples) with
    the lowest fractions: the examples nearest to the eval side, the same ones on every rebuild.
    """
    values = np.asarray(fractions, dtype=np.float64)
    mask = values < eval_fraction
    target = min(min_eval, len(values) // 2)
    if int(mask.sum()) < target:
        mask[:] = False
        mask[np.argsort(values, kind="stable")[:target]] = True
    return mask


def eval_cutoff(fractions: Sequence[float], eval_fraction: float, min_eval: int) -> float:
    """The one threshold every view splits at (eval iff fraction < cutoff), over the prompts of all views.

    `eval_fraction`, raised when fewer than `min_eval` distinct prompts (never more than half of them) fall
    below it, to take in the prompts nearest to the eval side: the same ones on every rebuild. Over the
    distinct fractions, since one prompt can have several answers, in several views."""
    distinct = np.unique(np.asarray(fractions, dtype=np.float64))
    target = min(min_eval, len(distinct) // 2)
    if int((distinct < eval_fraction).sum()) >= target or target == 0:
        return eval_fraction
    return float(np.nextafter(distinct[target - 1], np.inf))
