"""The PostgreSQL lake as a source: logical replication with wal2json (``replicate``: the ``cdc``
transports and the ``snapshot``), keyset polling (``poll``), and what they share about the lake
table (``lake``)."""
