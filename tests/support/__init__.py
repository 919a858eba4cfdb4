"""Shared test support: private Mosquitto brokers, a throwaway PKI, media helpers."""
