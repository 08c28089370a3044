"""cachemon: monitoring, alerting, cost and TTL tuning for a tiered Workers cache.

The package is the library; `python -m cachemon`, `python -m jobs` and the
Streamlit app are thin shells over it.
"""

# The one definition of the version: pyproject.toml reads it from here
# ([tool.setuptools.dynamic]), so a checkout and an installed package agree.
__version__ = "0.5.0"
