"""Running one plugin outside a server: for its author's command line and tests."""
