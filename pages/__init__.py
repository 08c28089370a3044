"""The dashboard pages, one module per page, run by app.py's `st.navigation`."""
