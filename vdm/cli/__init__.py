"""The command line's modes above the Tasks: --mode=eval and --mode=sample (modes)."""
