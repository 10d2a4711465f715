"""CLI subcommands of the runtime (each: add_arguments(parser), run(args) -> int)."""
