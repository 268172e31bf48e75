"""Imported at start-up by every Python process of a benchmarked server: see netguard.py."""

import netguard

netguard.install_from_env()
