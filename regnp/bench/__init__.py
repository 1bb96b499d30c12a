"""The benchmark: ``python -m regnp.bench`` (``bench.py``), the models it times (``setups.py``)
and the PyTorch twin it compares with (``torch_side.py``, optional: torch is never required)."""
