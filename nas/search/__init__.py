"""The search: the supernet (LoRA branches scaled by the DAM), relaxations, hypergradients and their virtual
steps, the bilevel step, the DAM optimizer, regularizers, selection criteria, discretizers, diagnostics, and the
search loop (``loop.py``) that runs them."""
