"""Test doubles that are real servers: the Analytics Engine emulator."""
