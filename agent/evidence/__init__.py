"""Sealing and verification of evidence items: hash chain, manifest, signature, annotations."""
