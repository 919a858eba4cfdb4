"""Small shared pieces at the bottom of the house: errors, time, files, SQLite, audit chain, logging."""
