"""The message for a key no config knows, shared by the training, repartition, eval and observe configs.

Role: configuration layer (stdlib only). A misspelt key gets the closest known key ("did you mean")
instead of the whole list; a key that resembles none lists every known key. Both name the command that
prints each key with its default and help.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

# A typo of a `dids_*` key shares the prefix with every known key, which lifts every ratio: 0.8 keeps
# one-letter slips and swaps (`dids_bugdet`, `dids_static_weight`) and drops unrelated names (`dids_lr`).
SUGGESTION_CUTOFF = 0.8


def unknown_key_problem(key: str, known: Sequence[str], *, family: str, listing: str) -> str:
    """One problem line for `key`, which is not in `known`.

    Args:
        key: the key as the user wrote it.
        known: every accepted key, in the order to list them.
        family: how the keys are named in the message, e.g. "`dids_*` keys" or "repartition keys".
        listing: the command that prints every key with its help, e.g. "llamafactory-dids keys".
    """
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=SUGGESTION_CUTOFF)
    if close:
        return f"Unknown key `{key}`. Did you mean `{close[0]}`? (`{listing}` lists every key.)"
    return f"Unknown key `{key}`. Known {family}: {', '.join(known)} (`{listing}` explains each)."
