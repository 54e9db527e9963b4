"""`python -m trainer` behaves like `recur-train` (the entry point for `ray job submit`)."""

from trainer.cli import main

main()
