"""Reports shared by evaluate, audit and monitor: --fail-on rules, plots and self-contained HTML."""
