"""Let ``python -m queuectl`` run the same program as the console script."""

from queuectl.cli import main

if __name__ == "__main__":
    main()
