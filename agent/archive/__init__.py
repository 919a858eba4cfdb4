"""The central archive: receiver (MQTT), storage (root/unit/case/item), registry (enrolled keys),
retrieval with its audit log. ``edge-agent archive serve|enroll|list|show|export``."""
