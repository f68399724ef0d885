"""vlaprune: how much of a VLA policy do you need?"""

__version__ = "0.1.0"
