"""The `namd` command: its sub-commands (one module each in `commands/`), the graph of stages
that `namd demo` walks (`graph`), how one stage runs (`stages`) and the warm worker processes
that run them (`pool`). The top layer: nothing else in namd imports it."""
