"""Central monitoring (issue 6): fleet state in SQLite (state.py), the MQTT subscriber (ingest.py),
the web page and JSON API (web.py), the terminal view (tui.py) and the reports (reports.py)."""
