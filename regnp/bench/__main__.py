"""``python -m regnp.bench``: the benchmark's command line (see ``bench.py``)."""
from regnp.bench.bench import main

if __name__ == "__main__":
    main()
