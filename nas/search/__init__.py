"""The search: the supernet (LoRA branches scaled by the DAM), relaxations, hypergradients and their virtual
steps, the bilevel step, the DAM optimizer, regularizers, selection criteria, discretizers, diagnostics, and the
search loop (``loop.py``) that runs them."""

# The criteria from the field register themselves in nas.search.criteria's registry, one module each; importing any
# part of nas.search imports them, so every registered criterion is there whatever module a caller reads first.
from nas.search import criterion_cka, criterion_condition, criterion_snip  # noqa: E402, F401
