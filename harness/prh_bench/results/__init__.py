"""What runs leave behind and everything built from it: the run folder and its typed record (`run_folder.py`),
the report written into it (`report.py`), per-pair result records and their merge (`pair_records.py`), score baselines
(`baseline.py`) and leaderboards (`leaderboard.py`, `publish.py`, `color_figure.py`).

Only the command line (cli.py) imports this package; it reads the engine's results and never the reverse
(tests/test_layout.py checks the boundary)."""
