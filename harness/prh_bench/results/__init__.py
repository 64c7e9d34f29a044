"""What runs leave behind and everything built from it. `Results` (`results.py`) is the one results model: a run
folder (its tables, `run_folder.py`, and run.json, `run_record.py`) and a results store (`store_results.py`) load
into it, and the report (`report.py`), baselines (`baseline.py`), leaderboards (`leaderboard.py`, `publish.py`)
and figures (`figures.py`, `leaderboard_figures.py`, `color_figure.py`) read it. Per-pair result records and
their merge are `pair_records.py`, `merge.py` and `journal.py`; contributions `submission.py` and `verify.py`.

Only the command line (cli.py) and the front door (`prh_bench.run`, `prh_bench.load`) import this package; it
reads the engine's results and never the reverse (tests/test_layout.py checks the boundary)."""
