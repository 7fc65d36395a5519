class Guest:
    """The `sluice:module/guest` protocol (define, handle, query)."""
