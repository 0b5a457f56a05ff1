"""Code that runs inside plugin sub-interpreters. Standard library only."""
