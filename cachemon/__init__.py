"""cachemon: monitoring, alerting, cost and TTL tuning for a tiered Workers cache.

The package is the library; `python -m cachemon`, `python -m jobs` and the
Streamlit app are thin shells over it.
"""

__version__ = "0.1.0"
