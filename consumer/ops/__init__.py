"""Running paynorm: status and lag, metrics and health endpoints, logs and progress."""
