"""The agent's store of record: the SQLite ledger and the spool on disk.

Only this package touches the ledger's tables (``tests/store/test_store_layout.py`` checks it). Its parts:

- ``store.Store``    the facade producers, uplink, health and CLI use (items, states, annotations)
- ``repository``     every query of the ledger, as named methods returning typed rows
- ``ledger``         the schema (migrations) of ``ledger.db``
- ``writer``         one item's files copied, hashed and fsynced in one pass, then sealed
- ``recovery``       crash recovery and the chain lock (the device chain has one head)
- ``retrieval``      local copies shown, exported (audited) and purged after the retention
- ``ingest``         local files in as one sealed item;  ``setup``  ``edge-agent init``
"""
