"""``llnm-node``: the command line for admins, one module per sub-command group."""
