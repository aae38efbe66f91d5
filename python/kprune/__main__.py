"""``python -m kprune ...`` (what ``torchrun -m kprune`` runs): the command line."""
import sys

from kprune.cli import main

if __name__ == "__main__":
    sys.exit(main())
