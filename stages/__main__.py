"""`python -m stages` prints the stage names (the Makefile's stage targets come from here)."""

from stages import STAGE_NAMES

print(" ".join(STAGE_NAMES))
