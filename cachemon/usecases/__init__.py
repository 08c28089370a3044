"""Use cases: one composition of the domain packages per thing a shell does."""
