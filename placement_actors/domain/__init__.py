"""Domain values: what is placed, where it can go and what came of it. Standard library only."""
