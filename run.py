#!/usr/bin/env python
"""adaptbench: `python run.py --help`. Same as the installed `adaptbench` command."""
from harness.cli import main

if __name__ == "__main__":
    main()
