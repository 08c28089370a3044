"""Data sources. Each produces `EventFrame`s for the one ingestion path."""
