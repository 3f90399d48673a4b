"""The ``atrous`` command: one thin module per subcommand."""
