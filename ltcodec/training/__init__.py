"""Training recipes for the shipped models (CPU-friendly; see DESIGN-NOTES §4)."""
