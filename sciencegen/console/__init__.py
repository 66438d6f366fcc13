"""What the commands say to a person: the config precheck (one-line errors) and ``--help``."""
