"""Data governance for image-text data sets: provenance, quality, duplicates, labels, PII, poisoning."""
