"""Place values of number tokens, and the optional place-value weights of NTL positions (issue 17, item 4).

A number token's *place* is the place of its most significant digit in the number it belongs to: 0 the units,
1 the tens, ..., -1 the tenths (``"1,234.5"`` cut as ``'1' '234' '5'``: places 3, 2, -1). Weights turn places
into a per-position factor of the loss: a sample's NTL is then ``sum(w q) / sum(w)`` over its scored positions
(``ntl_kernels.ntl_loss(..., weights=...)``), so only the ratios of the weights matter.

``place_weighting`` (reward option, also for the verl NTL loss):

    "none"   every position weighs 1 (default: the unweighted NTL).
    "place"  w = 1 + max(place, 0): units and decimals 1, tens 2, hundreds 3, ... — a wrong leading digit of a
             4-digit answer costs 4 times a wrong units digit. Linear, not exponential, so a long (runaway)
             number cannot make one position outweigh all others by orders of magnitude.

Final mode's places come from the answer's alignment with the ground truth (``ntl_reward.scoring``); a planted
row for a ground-truth digit the answer lacks gets the weight of that digit's place. All mode's places come from
the response text (``number_token_places``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

PLACE_WEIGHTINGS = ("none", "place")
# A number in the text: a maximal run of digits, commas and dots (as answer.py reads numbers); its digits before
# the first dot are the integer part, every digit after it decimal. Linear time as answer.py's patterns: the
# lookbehind starts an attempt only at the start of a run and every repeat is possessive (a plain greedy
# "[0-9.,]*[0-9]" backtracks over every start inside a run of dots: quadratic, 1.4 s at 8 KB).
_NUMBER_RUN = re.compile(r"(?<![0-9.,])[.,]*+[0-9][0-9.,]*+")


def check_place_weighting(place_weighting, name: str = "place_weighting") -> str:
    """``place_weighting`` itself, or ValueError naming ``name`` unless it is one of ``PLACE_WEIGHTINGS``."""
    if not isinstance(place_weighting, str) or place_weighting not in PLACE_WEIGHTINGS:
        raise ValueError(f"{name} must be one of {PLACE_WEIGHTINGS}, got {place_weighting!r:.80}")
    return place_weighting


def place_weights(places, place_weighting: str = "none") -> torch.Tensor:
    """Weights of positions from their places (module docstring): ``places`` integer ``[...]`` (tensor or
    sequence) -> float32 ``[...]``, finite and >= 1, on ``places``' device."""
    check_place_weighting(place_weighting)
    places = torch.as_tensor(places)
    if places.dtype.is_floating_point or places.dtype.is_complex or places.dtype == torch.bool:
        raise ValueError(f"places must be integers, got dtype {places.dtype}")
    if place_weighting == "none":
        return torch.ones(places.shape, dtype=torch.float32, device=places.device)
    return 1.0 + places.clamp(min=0).to(torch.float32)


def number_token_places(text: str, widths: Sequence[int] | torch.Tensor) -> list[int] | None:
    """The place of each number token of a response (module docstring), in order.

    ``widths[k]`` is the digit count of the response's k-th number token (``len(NumberTokens.texts[slot])``); the
    k-th token covers the next ``widths[k]`` ASCII digits of ``text``. None when the tokens are not the text's:
    the widths do not add up to the text's digit count, or a token would span two numbers.
    """
    widths = torch.as_tensor(widths, dtype=torch.long).tolist()
    runs = iter(_NUMBER_RUN.finditer(text) if isinstance(text, str) else ())
    places, left_in_run, next_place = [], 0, 0
    for width in widths:
        if left_in_run == 0:
            run = next(runs, None)
            if run is None:
                return None
            integer, _, fraction = run.group().partition(".")
            integer_digits = sum(map(integer.count, "0123456789"))
            left_in_run = integer_digits + sum(map(fraction.count, "0123456789"))
            next_place = integer_digits - 1
        if not 0 < width <= left_in_run:
            return None
        places.append(next_place)
        left_in_run, next_place = left_in_run - width, next_place - width
    return places if left_in_run == 0 and next(runs, None) is None else None
