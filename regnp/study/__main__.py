"""``python -m regnp.study``: the experiment grid's command line (see ``experiments.py``)."""
from regnp.study.experiments import main

if __name__ == "__main__":
    main()
