"""`python -m prh_bench`: the same command as `prh-bench`."""

from .cli import main

main(prog_name="prh-bench")
