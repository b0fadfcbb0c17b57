"""Helpers that test modules of more than one tier import (pyproject: pythonpath = tests)."""
