"""The one owner of the wire: topics, payloads, receipts and their signatures, the MQTT client."""
