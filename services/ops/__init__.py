"""The `homeward` command: one module per command group, sharing helpers through `common`."""
