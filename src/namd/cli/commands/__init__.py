"""Sub-commands of `namd`; each module defines `register(subparsers)`."""
