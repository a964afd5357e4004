"""Pure placement policies and the ledgers they read: deterministic, no I/O, no clock."""
