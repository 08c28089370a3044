"""The job runner process (`python -m jobs`): a thin shell over cachemon."""
