"""vlaprune: how much of a VLA policy do you need?"""

__version__ = "0.1.0"

# The OpenMP wait policy (OMP_WAIT_POLICY) is chosen per command by `vlaprune.cli.main`, before torch loads:
# PASSIVE for commands that run closed-loop episodes, the library default for training and scoring.
