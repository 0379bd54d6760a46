"""Your implementations of the exercises; see tutorial/exercises.py."""
