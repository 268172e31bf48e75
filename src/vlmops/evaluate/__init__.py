"""Evaluation of VLMs: zero-shot accuracy (more metrics arrive with the evaluate issue)."""
